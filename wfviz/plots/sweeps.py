"""Figures of a sweep: measured points against the high-rate theory lines.

numpy and sweep points (:class:`~wfviz.experiments.SweepPoint` or their row dicts) in,
``go.Figure`` out. Marker shape = method, colour =
rotation; the markers are open and shrink from one rotation to the next, so that points that
coincide (WaterSIC is basis-free: its points for every rotation sit on top of each other) stay
visible as concentric rings. Theory lines and measured points are in separate legend groups.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..theory import WATERSIC_GAP_BITS, it_distortion, watersic_distortion
from ..waterfilling import reverse_waterfill
from .layer import CODED, INK, WATER, style_figure

_SYMBOLS = {"watersic": "circle", "gptq-ec": "diamond", "gptq": "square", "rtn": "x"}
_SIZES = [17, 13, 9, 6, 4]
_DASHES = ["dash", "dot", "dashdot", "longdash", "longdashdot"]
_ROTATION_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]
_THEORY = dict(legendgroup="theory", legendgrouptitle=dict(text="High-rate theory"))
_MEASURED = dict(legendgroup="measured", legendgrouptitle=dict(text="Measured"))
_GPTQ_FAMILY = ("gptq-ec", "gptq", "rtn")


def _rows(points) -> list[dict]:
    return [p if isinstance(p, dict) else p.as_row() for p in points]


def _color(rotations: list[str], rotation: str) -> str:
    return _ROTATION_COLORS[rotations.index(rotation) % len(_ROTATION_COLORS)]


def _legend_right(fig: go.Figure) -> go.Figure:
    """A vertical legend right of the plot: two groups of up to ten entries read better there
    than in rows under the x axis."""
    fig.update_layout(legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top",
                                  groupclick="toggleitem", tracegroupgap=14),
                      margin=dict(r=20, b=60))
    return fig


def _points(fig: go.Figure, rows: list[dict], rotations: list[str], y_key: str) -> None:
    for method in dict.fromkeys(r["method"] for r in rows):
        for k, rot in enumerate(rotations):
            pts = [r for r in rows if r["method"] == method and r["rotation"] == rot]
            if pts:
                fig.add_trace(go.Scatter(
                    x=[p["rate"] for p in pts], y=[p[y_key] for p in pts], mode="markers",
                    name=f"{method} · {rot}", **_MEASURED,
                    marker=dict(symbol=_SYMBOLS.get(method, "circle") + "-open",
                                size=_SIZES[min(k, len(_SIZES) - 1)],
                                line=dict(width=2, color=_color(rotations, rot)),
                                color=_color(rotations, rot))))


def gptq_gaps(rows, rotations) -> dict[str, float]:
    """Predicted high-rate gap of entropy-coded GPTQ over WaterSIC (bits) per rotation.

    The sweep's own ``predicted_gap_bits`` (GPTQ's column order, GPTQ-EC's damping), so the
    lines agree with the table. Empty when no GPTQ-family method ran (then no line is drawn).

    Examples
    --------
    >>> gaps = gptq_gaps([{"rotation": "identity", "method": "gptq-ec",
    ...                    "predicted_gap_bits": 0.3}], ["identity"])
    >>> round(gaps["identity"], 4)
    0.0454
    """
    rows = _rows(rows)
    out = {}
    for rot in rotations:
        pred = [r["predicted_gap_bits"] for r in rows
                if r["rotation"] == rot and r["method"] in _GPTQ_FAMILY
                and r.get("predicted_gap_bits") is not None]
        if pred:
            out[rot] = float(pred[0]) - WATERSIC_GAP_BITS
    return out


def _positive(y: np.ndarray) -> np.ndarray | list:
    """``y`` for a log axis: None where it is not positive (a singular Σ has GM(λ) = 0)."""
    y = np.asarray(y, dtype=np.float64)
    return y if np.all(y > 0) else [float(v) if v > 0 else None for v in y]


def dr_figure(rows, eigenvalues: np.ndarray, gaps: dict[str, float],
              rate_axis: str, variance: float = 1.0, *, title: str | None = None) -> go.Figure:
    """Measured distortion against the IT limit, WaterSIC and GPTQ-EC high-rate lines (log y).

    ``gaps``: rotation → predicted GPTQ-EC − WaterSIC gap in bits (:func:`gptq_gaps`); its
    line is WaterSIC's times ``2^(2·gap) = AM(d)/GM(d)``. ``title`` replaces the default one
    (name the layer there when the figure leaves the app).

    Examples
    --------
    >>> rows = [{"method": "watersic", "rotation": "identity", "rate": 3.0, "distortion": 0.02}]
    >>> fig = dr_figure(rows, np.ones(4), {}, "rate (bits/weight, per-column entropy)")
    >>> [t.name for t in fig.data][:2]
    ['IT limit (exact waterfilling)', 'WaterSIC (2πe/12)·GM(λ), any basis']
    """
    rows = _rows(rows)
    lo = min(r["rate"] for r in rows)
    hi = max(r["rate"] for r in rows)
    grid = np.linspace(max(0.0, lo - 0.25), hi + 0.25, 80)
    ws = watersic_distortion(eigenvalues, grid, variance=variance)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=grid, y=it_distortion(eigenvalues, grid, variance=variance),
                             mode="lines", name="IT limit (exact waterfilling)", **_THEORY,
                             line=dict(color=WATER, width=3)))
    fig.add_trace(go.Scatter(x=grid, y=_positive(ws), mode="lines",
                             name="WaterSIC (2πe/12)·GM(λ), any basis", **_THEORY,
                             line=dict(color=CODED, width=2)))
    rotations = list(dict.fromkeys([*gaps, *(r["rotation"] for r in rows)]))
    for i, (rot, gap) in enumerate(gaps.items()):
        fig.add_trace(go.Scatter(x=grid, y=_positive(ws * 2.0 ** (2 * gap)), mode="lines",
                                 name=f"GPTQ-EC · {rot} (AM(d))", **_THEORY,
                                 line=dict(color=_color(rotations, rot),
                                           dash=_DASHES[i % len(_DASHES)], width=1.5)))
    _points(fig, rows, rotations, "distortion")
    fig = style_figure(fig, title or "Distortion per weight vs rate: measured points and theory",
                       rate_axis, "D = tr((W−Ŵ)Σ(W−Ŵ)ᵀ)/(a·n) (log)", log_y=True, height=520)
    return _legend_right(fig)


def _payload(row: dict) -> tuple[float, float]:
    """``(payload rate, gap there)`` of a point; the full ones for rows without side bits."""
    if "payload_gap_bits" in row and "side_bits" in row:
        return row["rate"] - row["side_bits"], row["payload_gap_bits"]
    return row["rate"], row["gap_bits"]


def _constant_predictions(rows: list[dict]) -> bool:
    """Whether every method · rotation has one prediction and WaterSIC's is the 0.2546 bit
    (Gaussian rows); otherwise (given weights) each point has its own."""
    seen: dict = {}
    for r in rows:
        if r.get("predicted_gap_bits") is None:
            continue
        seen.setdefault((r["method"], r["rotation"]), set()).add(round(r["predicted_gap_bits"], 9))
    return all(len(v) == 1 for v in seen.values()) and all(
        v == {round(WATERSIC_GAP_BITS, 9)} for (m, _), v in seen.items() if m == "watersic")


def _prediction_lines(fig: go.Figure, rows: list[dict], rotations: list[str]) -> None:
    """One line per method · rotation through its points' own predictions."""
    for method in dict.fromkeys(r["method"] for r in rows):
        for rot in rotations:
            pts = sorted((_payload(r)[0], r["predicted_gap_bits"]) for r in rows
                         if r["method"] == method and r["rotation"] == rot
                         and r.get("predicted_gap_bits") is not None)
            if pts:
                fig.add_trace(go.Scatter(
                    x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines", **_THEORY,
                    name=f"{method} · {rot}: predicted for these weights",
                    line=dict(color=_color(rotations, rot), width=1.5,
                              dash="solid" if method == "watersic" else "dash")))


def gap_figure(rows, gaps: dict[str, float], rate_axis: str,
               bias: tuple[np.ndarray, np.ndarray, int] | None = None) -> go.Figure:
    """Measured gap to the IT limit at the payload rate, with the high-rate predictions.

    The high-rate theory ignores side information (O(1/a) bits per weight), so the points are
    like with like: x is the payload rate ``rate − side_bits`` and y ``payload_gap_bits``
    (rows without those columns are drawn at their full rate and ``gap_bits``). For Gaussian
    rows the predictions are lines: WaterSIC's 0.2546 bit and, from ``gaps``
    (:func:`gptq_gaps`), GPTQ-EC's per rotation. For given weights every point has its own
    prediction (their entropy powers), drawn as one line per method · rotation.

    ``bias``: ``(rates, bits, rows)``, the plug-in entropy's expected shortfall with that many
    codes per column (:func:`wfviz.rates.plugin_entropy_bias`); drawn as the WaterSIC line
    minus it.

    Examples
    --------
    >>> rows = [{"method": "watersic", "rotation": "identity", "rate": 3.0, "gap_bits": 0.26}]
    >>> gap_figure(rows, {}, "rate (bits/weight, per-column entropy)").data[-1].name
    'watersic · identity'
    >>> row = dict(rows[0], side_bits=0.1, payload_gap_bits=0.25, predicted_gap_bits=0.31)
    >>> [t.name for t in gap_figure([row], {}, "payload rate").data][:1]
    ['watersic · identity: predicted for these weights']
    """
    rows = _rows(rows)
    rates = [_payload(r)[0] for r in rows]
    ends = [min(rates) - 0.1, max(rates) + 0.1]
    rotations = list(dict.fromkeys([*gaps, *(r["rotation"] for r in rows)]))
    fig = go.Figure()
    if _constant_predictions(rows):
        fig.add_trace(go.Scatter(x=ends, y=[WATERSIC_GAP_BITS] * 2, mode="lines", **_THEORY,
                                 name=f"WaterSIC: {WATERSIC_GAP_BITS:.4f} bit, any basis",
                                 line=dict(color=CODED, width=2)))
        for i, (rot, gap) in enumerate(gaps.items()):
            pred = WATERSIC_GAP_BITS + gap
            fig.add_trace(go.Scatter(x=ends, y=[pred] * 2, mode="lines", **_THEORY,
                                     name=f"GPTQ-EC · {rot}: {pred:.3f} bit",
                                     line=dict(color=_color(rotations, rot),
                                               dash=_DASHES[i % len(_DASHES)], width=1.5)))
    else:
        _prediction_lines(fig, rows, rotations)
    if bias is not None:
        x, b, n_rows = bias
        fig.add_trace(go.Scatter(
            x=x, y=WATERSIC_GAP_BITS - np.asarray(b), mode="lines", **_THEORY,
            name=f"WaterSIC as read from {n_rows} codes per column", line=dict(
                color=CODED, width=1.5, dash="dot")))
    payload = [dict(r, rate=_payload(r)[0], gap=_payload(r)[1]) for r in rows]
    _points(fig, payload, rotations, "gap")
    fig.add_hline(y=0.0, line=dict(color=INK, width=1))
    fig.add_annotation(xref="paper", x=0, y=0, yref="y", text="IT limit", showarrow=False,
                       xanchor="left", yanchor="bottom", font=dict(color=INK, size=11))
    fig = style_figure(fig, "Gap to the information-theoretic limit at the payload rate, "
                            "½·log2(D / D_IT(R − side))",
                       rate_axis, "gap (bits per weight)", height=460)
    return _legend_right(fig)


def column_rate_figure(measured: np.ndarray, d: np.ndarray, rotation: str) -> go.Figure:
    """WaterSIC's measured entropy per column against waterfilling over ``d`` at the same mean.

    x is ``½ log2(d_j / GM(d))``: how many bits column j's innovation variance is above the
    average. At high rate the theory is the diagonal ``R̄ + x``; it bends to 0 where a column
    falls below the water. Trace ``"theory"`` holds the sorted theory, ``"measured"`` the
    columns in SIC order.

    Examples
    --------
    >>> fig = column_rate_figure(np.array([3.0, 2.0]), np.array([4.0, 1.0]), "identity")
    >>> [round(float(v), 1) for v in fig.data[0].x]
    [0.5, -0.5]
    """
    measured = np.asarray(measured, dtype=np.float64)
    d = np.maximum(np.asarray(d, dtype=np.float64), 1e-300)
    log_d = np.log2(d)
    x = 0.5 * (log_d - log_d.mean())
    theory = reverse_waterfill(d, rate=max(float(measured.mean()), 1e-9)).rates
    order = np.argsort(x, kind="stable")
    fig = go.Figure(go.Scatter(x=x, y=measured, mode="markers", name="measured",
                               marker=dict(size=5, color=CODED, opacity=0.55),
                               hovertemplate="column %{text}<br>x = %{x:.2f}<br>"
                                             "%{y:.2f} bits<extra></extra>",
                               text=[str(j) for j in range(x.size)]))
    fig.add_trace(go.Scatter(x=x[order], y=theory[order], mode="lines", name="theory",
                             line=dict(color=INK, width=2)))
    fig.update_layout(showlegend=True)
    fig.data[0].name = "measured: entropy of column j's codes"
    fig.data[1].name = f"theory: waterfilling over d at the mean {measured.mean():.2f} bits"
    return style_figure(fig, f"WaterSIC bits per column vs its innovation variance, basis: "
                             f"{rotation}",
                        "½·log2(d_j / GM(d)), bits (column j's innovation vs the average)",
                        "bits per weight of column j (per-column entropy)", height=440)
