"""Figures of one layer's Σ_X: spectrum, diagonal, heatmaps, the waterfilling vessel, D(R),
the Cholesky diagonal and per-column rates (numpy in, ``go.Figure`` out).

Large spectra are thinned before plotting (:func:`plot_index`) so that a slider move at
n = 14336 sends a few thousand points, not tens of thousands; each figure says so in a caption
the page shows. Trace names are stable: the tests find traces by name.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..stats import OUTLIER_RATIO, top_channels

MAX_BARS = 256
"""Up to this many coordinates the vessel is drawn as bars, one per coordinate."""
MAX_POINTS = 2000
"""Most points per line trace; longer series are thinned by :func:`plot_index`."""
HEATMAP_SIZE = 256
"""The Σ heatmap is block-averaged to at most this many rows and columns."""

WATER = "#5aa9e6"
CODED = "#e07b39"
INK = "#1b2430"
_MARGIN = dict(l=70, r=20, t=50, b=90)  # the legend sits below the x axis title


def plot_index(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spread coordinates, always keeping both ends.

    Examples
    --------
    >>> plot_index(5, 3).tolist()
    [0, 2, 4]
    """
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def wrap_title(text: str, width: int) -> str:
    """``text`` with ``<br>`` between words so that no line is much longer than ``width``
    characters: Plotly never wraps a title, and a large font cuts a long one off.

    Examples
    --------
    >>> wrap_title("Distortion per column at the same mean rate", 20)
    'Distortion per column<br>at the same mean rate'
    >>> wrap_title("Short", 20)
    'Short'
    """
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width + 2:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def style_figure(fig: go.Figure, title: str, x: str, y: str, *, log_y: bool = False,
                 height: int = 420) -> go.Figure:
    # One update_layout call: plotly validates every property assignment, and three calls
    # (layout, x axes, y axes) made this the largest part of a Waterfilling slider move.
    yaxis = dict(title_text=y.replace(" (", "<br>(") if len(y) > 30 else y,  # long rate titles
                 type="log" if log_y else "linear", exponentformat="power")
    if log_y:
        yaxis.update(_decade_ticks(fig))
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"), height=height,
                      margin=_MARGIN, legend=dict(orientation="h", x=0, y=-0.2, yanchor="top"),
                      xaxis=dict(title_text=x), yaxis=yaxis)
    return fig


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def log_tick_text(value: float) -> str:
    """A log-axis tick label: plain for 0.01 … 1000, else ``m·10ᵏ`` with a superscript.

    Examples
    --------
    >>> [log_tick_text(v) for v in (0.05, 20.0, 1e-4, 2e-4)]
    ['0.05', '20', '10⁻⁴', '2·10⁻⁴']
    """
    k = int(np.floor(np.log10(value) + 1e-9))
    mantissa = round(value / 10.0**k)
    if -2 <= k <= 2:
        return f"{value:.{max(0, -k)}f}"
    power = "10" + str(k).translate(_SUPERSCRIPT)
    return power if mantissa == 1 else f"{mantissa}·{power}"


def _decade_ticks(fig: go.Figure) -> dict:
    """One tick label per decade over more than two decades, else labels at 1, 2 and 5 only,
    all the same size (plotly's default labels every digit of a short log range, which
    bunches up, and its "D2" labels print the 2 and 5 as small bare digits)."""
    ys = [np.asarray(t.y, dtype=np.float64) for t in fig.data if t.y is not None]
    ys = [y[y > 0] for y in ys if y.size]
    ys = [y for y in ys if y.size]
    if not ys:
        return {}
    lo, hi = min(y.min() for y in ys), max(y.max() for y in ys)
    if np.log10(hi / lo) > 2:
        return {"dtick": 1}
    ticks = [m * 10.0**k for k in range(int(np.floor(np.log10(lo))) - 1,
                                        int(np.ceil(np.log10(hi))) + 1) for m in (1, 2, 5)]
    inside = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5]
    return {"tickvals": inside, "ticktext": [log_tick_text(t) for t in inside]}


def _positive_floor(values: np.ndarray) -> float:
    """Half the smallest positive value: where a log axis draws the zeros."""
    pos = values[values > 0]
    return float(pos.min()) * 0.5 if pos.size else 1e-12


def _zeros_to(values: np.ndarray, floor: float) -> np.ndarray:
    """``values`` with zeros (and negative round-off) replaced by ``floor`` for a log axis."""
    return np.where(values > 0, values, floor)


def spectrum_figure(eigenvalues: np.ndarray) -> go.Figure:
    """Eigenvalues λ_1 ≥ … ≥ λ_n of Σ_X on a log axis (zeros clipped to the smallest λ > 0)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    idx = plot_index(lam.size)
    y = _zeros_to(lam[idx], _positive_floor(lam))
    fig = go.Figure(go.Scatter(x=idx + 1, y=y, mode="lines", name="λ_i", line=dict(color=WATER)))
    return style_figure(fig, "Eigenvalue spectrum of Σ_X", "index i (largest first)", "λ_i (log)",
                        log_y=True)


def label_positions(x: np.ndarray, extent: float, *, min_gap: float = 0.06) -> list[str]:
    """Text positions for point labels at ``x``: above each point, except that a label closer
    than ``min_gap × extent`` to its left neighbour's goes on the other side (below if the
    neighbour's is above), so that nearby labels (channels 514 and 541 of 1536) stay legible.

    Examples
    --------
    >>> label_positions(np.array([500, 10, 520, 530]), 1000)
    ['top center', 'top center', 'bottom center', 'top center']
    """
    x = np.asarray(x, dtype=np.float64)
    out = ["top center"] * x.size
    order = np.argsort(x, kind="stable")
    for prev, cur in zip(order[:-1], order[1:], strict=True):
        if x[cur] - x[prev] < min_gap * extent and out[prev] == "top center":
            out[cur] = "bottom center"
    return out




def diagonal_figure(diag: np.ndarray, k: int = 5) -> go.Figure:
    """diag Σ_X per channel on a log axis, with up to ``k`` outlier channels marked."""
    diag = np.asarray(diag, dtype=np.float64)
    floor = _positive_floor(diag)
    idx = plot_index(diag.size, 4000)
    top = top_channels(diag, k, min_ratio=OUTLIER_RATIO)
    fig = go.Figure(go.Scattergl(x=idx, y=_zeros_to(diag[idx], floor), mode="markers",
                                 marker=dict(size=3, color=WATER), name="E[x_j²]"))
    fig.add_trace(go.Scatter(x=top, y=_zeros_to(diag[top], floor), mode="markers+text",
                             text=[str(j) for j in top],
                             textposition=label_positions(top, diag.size),
                             marker=dict(size=9, color=CODED, symbol="diamond"),
                             name="top outlier channels"))
    return style_figure(fig, "Diagonal of Σ_X (second moment per input channel)",
                        "channel j (native order)", "E[x_j²] (log)", log_y=True)


def block_average(matrix: np.ndarray, size: int = HEATMAP_SIZE) -> np.ndarray:
    """Mean of |Σ| over square blocks so that the result is at most ``size × size``.

    Examples
    --------
    >>> block_average(np.arange(16.0).reshape(4, 4), 2).tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    a = np.abs(np.asarray(matrix, dtype=np.float64))
    n = a.shape[0]
    step = -(-n // size)
    if step == 1:
        return a
    m = -(-n // step)
    padded = np.full((m * step, m * step), np.nan)
    padded[:n, :n] = a
    return np.nanmean(padded.reshape(m, step, m, step), axis=(1, 3))


def correlation_matrix(matrix: np.ndarray) -> np.ndarray:
    """Σ_ij / √(Σ_ii Σ_jj), with 0 wherever a channel is dead (Σ_ii = 0).

    Examples
    --------
    >>> correlation_matrix(np.array([[4.0, 2.0], [2.0, 4.0]])).tolist()
    [[1.0, 0.5], [0.5, 1.0]]
    """
    m = np.asarray(matrix, dtype=np.float64)
    scale = np.sqrt(np.clip(np.diag(m), 0.0, None))
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    return m * inv[:, None] * inv[None, :]


def heatmap_figure(matrix: np.ndarray, size: int = HEATMAP_SIZE, *,
                   correlation: bool = False) -> go.Figure:
    """log10 |Σ_ij| (or, with ``correlation``, |corr(x_i, x_j)| on a linear 0–1 scale) as a
    heatmap, block-averaged to at most ``size × size`` cells."""
    avg = block_average(correlation_matrix(matrix) if correlation else matrix, size)
    step = -(-matrix.shape[0] // avg.shape[0])
    if correlation:
        # Off-diagonal correlations are mostly small: saturate the colour at their 99th
        # percentile instead of at the diagonal's 1, or the whole picture is one colour.
        off = avg[~np.eye(avg.shape[0], dtype=bool)]
        top = float(np.nanpercentile(off, 99)) if off.size else 1.0
        z, colorbar = avg, "|corr|"
        zrange = dict(zmin=0.0, zmax=top if 0 < top < 1 else 1.0)
        title = "|corr(x_i, x_j)| = |Σ_ij| / √(Σ_ii Σ_jj)"
    else:
        floor = _positive_floor(avg[np.isfinite(avg)])
        z, colorbar, zrange = np.log10(_zeros_to(avg, floor)), "log10 |Σ_ij|", {}
        title = "|Σ_X| (log colour)"
    ticks = np.arange(avg.shape[0]) * step
    fig = go.Figure(go.Heatmap(z=z, x=ticks, y=ticks, colorscale="Viridis", name=colorbar,
                               colorbar=dict(title=dict(text=colorbar)), **zrange))
    fig.update_xaxes(range=[ticks[0] - step / 2, ticks[-1] + step / 2], constrain="domain")
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    title += f", mean over {step}×{step} blocks" if step > 1 else ""
    fig = style_figure(fig, title, "channel j", "channel i", height=480)
    return fig.update_layout(margin=dict(b=50))


def vessel_figure(variances: np.ndarray, theta: float, *, log_y: bool = True) -> go.Figure:
    """The reverse-waterfilling vessel: sorted σ²λ_i, the water level θ and D_i = min(θ, σ²λ_i).

    Up to :data:`MAX_BARS` coordinates each is a bar; beyond, both parts are step areas over
    thinned coordinates. Trace ``"σ²λ_i"`` holds the variances, ``"water D_i"`` the distortions;
    θ is the first layout shape (``y0 == y1 == θ``).
    """
    lam = np.sort(np.asarray(variances, dtype=np.float64))[::-1]
    floor = _positive_floor(lam)
    water = np.minimum(theta, lam)
    fig = go.Figure()
    if lam.size <= MAX_BARS:
        x = np.arange(1, lam.size + 1)
        fig.add_trace(go.Bar(x=x, y=_zeros_to(lam, floor), name="σ²λ_i", marker_color=CODED,
                             opacity=0.55))
        fig.add_trace(go.Bar(x=x, y=_zeros_to(water, floor), name="water D_i",
                             marker_color=WATER))
        fig.update_layout(barmode="overlay", bargap=0.05)
    else:
        idx = plot_index(lam.size)
        # Opaque water over a translucent vessel, so the two areas do not blend to grey.
        for y, name, color, fill in ((lam, "σ²λ_i", CODED, "rgba(224,123,57,0.55)"),
                                     (water, "water D_i", WATER, WATER)):
            fig.add_trace(go.Scatter(x=idx + 1, y=_zeros_to(y[idx], floor), name=name,
                                     mode="lines", line=dict(shape="hv", color=color, width=1),
                                     fill="tozeroy", fillcolor=fill))
    fig.add_shape(type="line", xref="paper", x0=0, x1=1, y0=theta, y1=theta,
                  line=dict(color=INK, dash="dash", width=2))
    label_y = np.log10(max(theta, floor)) if log_y else theta  # θ = 0 for an all-zero Σ
    fig.add_annotation(xref="paper", x=1, y=label_y, yref="y",
                       text=f"θ = {theta:.3g}", showarrow=False, xanchor="right",
                       yanchor="bottom", font=dict(color=INK))
    return style_figure(fig, "Reverse waterfilling: water below θ is distortion, the rest is coded",
                        "coordinate i (eigen-direction, largest first)", "σ²λ_i", log_y=log_y)


def rates_figure(rates: np.ndarray, rate_axis: str) -> go.Figure:
    """Per-coordinate rates R_i = max(0, ½ log2(σ²λ_i/θ)) in the order of decreasing λ."""
    r = np.sort(np.asarray(rates, dtype=np.float64))[::-1]
    idx = plot_index(r.size)
    fig = go.Figure(go.Scatter(x=idx + 1, y=r[idx], mode="lines", name="R_i",
                               line=dict(shape="hv", color=CODED), fill="tozeroy"))
    fig.add_hline(y=float(np.mean(r)), line=dict(color=INK, dash="dot"),
                  annotation_text=f"mean R = {np.mean(r):.3f}", annotation_position="top right")
    return style_figure(fig, "Bits per coordinate R_i", "coordinate i (largest λ first)", rate_axis,
                        height=380)


def dr_curve_figure(rates: np.ndarray, distortions: np.ndarray, point: tuple[float, float],
                    rate_axis: str, highrate: np.ndarray | None = None) -> go.Figure:
    """D(R) of reverse waterfilling (log y) with the current operating point."""
    fig = go.Figure(go.Scatter(x=rates, y=distortions, mode="lines", name="D(R), waterfilling",
                               line=dict(color=WATER, width=3)))
    if highrate is not None:
        fig.add_trace(go.Scatter(x=rates, y=highrate, mode="lines", name="σ² GM(λ) 2^(−2R)",
                                 line=dict(color="#8c8c8c", dash="dot")))
    fig.add_trace(go.Scatter(x=[point[0]], y=[point[1]], mode="markers", name="current (R, D)",
                             marker=dict(size=12, color=CODED, symbol="circle")))
    return style_figure(fig, "Distortion-rate function", rate_axis, "D per coordinate (log)",
                        log_y=True, height=380)


def _series_style(n: int, color: str) -> dict:
    """A per-column series: a line up to 64 columns, dots beyond (a line through thousands of
    noisy values is a solid band that hides the level lines drawn over it)."""
    if n <= 64:
        return dict(mode="lines+markers", line=dict(color=color, width=1.5),
                    marker=dict(size=5, color=color))
    return dict(mode="markers", marker=dict(size=3, color=color, opacity=0.6))


def cholesky_figure(d: np.ndarray, rotation: str) -> go.Figure:
    """Cholesky diagonal d_j = Var(X_j | X_<j) per column (log y)."""
    d = np.asarray(d, dtype=np.float64)
    idx = plot_index(d.size)
    fig = go.Figure(go.Scatter(x=idx, y=_zeros_to(d[idx], _positive_floor(d)),
                               name="d_j", **_series_style(d.size, WATER)))
    # Level lines as traces: add_hline's annotation lands at 10**value on a log axis.
    ends = [0, d.size - 1]
    fig.add_trace(go.Scatter(x=ends, y=[d.mean()] * 2, mode="lines", name="AM(d)",
                             line=dict(color=CODED, dash="dash", width=3)))
    if np.all(d > 0):  # with a zero d_j the geometric mean is 0 and the gap unbounded
        gm = float(np.exp(np.mean(np.log(d))))
        fig.add_trace(go.Scatter(x=ends, y=[gm] * 2, mode="lines", name="GM(d)",
                                 line=dict(color=INK, dash="dot", width=3)))
    return style_figure(fig, f"Cholesky diagonal d_j, basis: {rotation}", "column j (SIC order)",
                        "d_j (log)", log_y=True, height=380)


def column_rates_figure(watersic: np.ndarray, gptq_rate: float, rate_axis: str) -> go.Figure:
    """WaterSIC's per-column rates (waterfilling over d) against GPTQ's equal rate per column."""
    r = np.asarray(watersic, dtype=np.float64)
    idx = plot_index(r.size)
    fig = go.Figure(go.Scatter(x=idx, y=r[idx], name="WaterSIC R_j",
                               **_series_style(r.size, CODED)))
    fig.add_trace(go.Scatter(x=[0, r.size - 1], y=[gptq_rate, gptq_rate], mode="lines",
                             name="GPTQ (equal rate)", line=dict(color=INK, dash="dash",
                                                                 width=3)))
    return style_figure(fig, "Bits per column", "column j (SIC order)", rate_axis, height=380)
