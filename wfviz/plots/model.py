"""Whole-model figures: perplexity or KL against measured bits per weight, and per-layer heatmaps.

Inputs are what :mod:`wfviz.model_results` reads from a grid's results; trace names are stable
(``"<method> · <rotation>"``, ``" · sequential"`` appended for that calibration, and
``"reference model"``) so tests can find them.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from ..model_results import ModelResults, curves, layer_matrix
from ..rates import metric_name
from .layer import style_figure

__all__ = ["model_curve_figure", "layer_heatmap_figure", "LAYER_VALUES", "model_label"]

_METHOD_COLORS = {"watersic": "#1f77b4", "gptq-ec": "#ff7f0e", "gptq": "#2ca02c",
                  "rtn": "#7f7f7f"}
_ROTATION_DASH = {"identity": "solid", "hadamard": "dash", "haar": "dot"}
_VALUES = {"ppl": "perplexity", "kl": "KL(reference ‖ quantized), nats per token",
           "nll": "NLL, nats per token"}
LAYER_VALUES = {
    "relative_distortion": ("relative distortion tr(EΣEᵀ)/tr(WΣWᵀ)", "log10 rel. D", True),
    "rate": ("measured bits per weight", "bits/weight", False),
    "predicted_gap_bits": ("predicted GPTQ gap ½log₂(AM/GM of d)", "bits", False),
}
"""Per-layer values a heatmap can show: column → (title, colour-bar title, log colour)."""


def model_label(results: ModelResults) -> str:
    """The model's label as its provenance records it, saying when it is a dequantized GGUF.

    Examples
    --------
    >>> from pathlib import Path
    >>> model_label(ModelResults(Path("."), {"model": {"label": "SmolLM2-135M-Instruct (Q4_1)",
    ...     "files": {"m.gguf": "ab"}}}, None))
    'SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)'
    """
    model = results.provenance.get("model") or {}
    label = str(model.get("label") or model.get("id") or "model")
    gguf = any(str(f).endswith(".gguf") for f in model.get("files") or {})
    if gguf and "dequantized" not in label:  # never let a GGUF pass for the original weights
        label = (label[:-1] + " GGUF, dequantized)" if label.endswith(")")
                 else label + " (GGUF, dequantized)")
    return label


def _metric_names(rows) -> str:
    names = sorted({metric_name(r["rate_metric"]) for r in rows})
    return " / ".join(names)


def model_curve_figure(results: ModelResults, value: str = "ppl", *,
                       highlight: str | None = None) -> go.Figure:
    """Perplexity (or KL) against measured bits per weight: one trace per method × rotation ×
    calibration, the reference model as a horizontal line (perplexity only).

    The x axis says how bits were counted; when methods count differently (whole-bit methods by
    log-cardinality, entropy-coded ones by column entropy) the legend groups the traces under
    their metric, so none is mixed silently. Perplexities above :data:`PPL_CAP` × the reference
    are left off the axis, with a note saying how many. ``highlight`` rings one point (by id).

    Examples
    --------
    >>> from pathlib import Path
    >>> r = ModelResults(Path("."), {}, {"ppl": 20.0}, [dict(id="a", method="gptq",
    ...     rotation="identity", calibration="one-shot", rate_metric="log_cardinality",
    ...     rate_label="x", rate=4.0, ppl=30.0, kl=0.5)])
    >>> [t.name for t in model_curve_figure(r).data]
    ['gptq · identity', 'reference model']
    """
    groups = curves(results, value)
    metrics = {c["rate_metric"] for c in groups}
    fig = go.Figure()
    for c in groups:
        name = f"{c['method']} · {c['rotation']}"
        name += f" · groups of {c['group_size']}" if c["group_size"] else ""
        name += " · sequential" if c["calibration"] == "sequential" else ""
        seq = c["calibration"] == "sequential"
        # one legend group per way of counting bits: no trace hides which metric it uses
        group = dict(legendgroup=c["rate_metric"],
                     legendgrouptitle_text=f"bits counted as {metric_name(c['rate_metric'])}"
                     ) if len(metrics) > 1 else {}
        fig.add_trace(go.Scatter(
            x=c["rates"], y=c["values"], name=name, customdata=c["ids"], **group,
            mode="markers" if seq else "lines+markers",
            marker=dict(size=12 if seq else 8, symbol="diamond" if seq else "circle",
                        color=_METHOD_COLORS.get(c["method"], "#9467bd")),
            line=dict(dash=_ROTATION_DASH.get(c["rotation"], "dashdot"),
                      color=_METHOD_COLORS.get(c["method"], "#9467bd")),
            hovertemplate=f"{name}<br>%{{x:.3f}} bits/weight<br>{value} %{{y:.4g}}"
                          "<br>%{customdata}<extra></extra>"))
    ref = (results.reference or {}).get(value)
    if value in ("ppl", "nll") and ref is not None and groups:
        xs = [x for c in groups for x in c["rates"]]
        fig.add_trace(go.Scatter(x=[min(xs), max(xs)], y=[ref, ref], mode="lines",
                                 name="reference model", line=dict(color="black", dash="dot"),
                                 hovertemplate=f"reference model: {value} {ref:.4g}"
                                               "<extra></extra>"))
    if highlight is not None:
        for row in results.points:
            if row["id"] == highlight and row.get(value) is not None:
                fig.add_trace(go.Scatter(x=[row["rate"]], y=[row[value]], mode="markers",
                                         name="chosen point", hoverinfo="skip",
                                         marker=dict(size=20, color="rgba(0,0,0,0)",
                                                     line=dict(width=3, color="crimson"))))
    metric = _metric_names([r for r in results.points if r.get(value) is not None]) or "—"
    x = f"bits per weight, measured, side information included ({metric})"
    y = _VALUES.get(value, value)
    title = f"{model_label(results)}: {y.split(',')[0]} vs bits per weight"
    fig = style_figure(fig, title, x, y, log_y=value == "ppl" and _spans_decade(groups),
                       height=520)
    if value == "ppl" and ref:
        _cap(fig, groups, ref)
    return fig.update_layout(legend=dict(y=-0.25))


PPL_CAP = 50.0
"""The perplexity axis stops at this multiple of the reference's: beyond it a model is broken,
and drawing 10⁹ would squash every useful point into the bottom of the chart."""


def _cap(fig: go.Figure, groups, ref: float) -> None:
    values = [v for c in groups for v in c["values"]]
    top = PPL_CAP * ref
    off = sum(v > top for v in values)
    if not off:
        return
    low = min(min(values), ref) * 0.9
    fig.update_yaxes(range=[math.log10(low), math.log10(top)])
    fig.add_annotation(text=f"{off} point{'s' if off > 1 else ''} above perplexity {top:,.0f} "
                            "off the chart (see the table)", xref="paper", yref="paper",
                       x=1.0, y=1.0, xanchor="right", yanchor="bottom", showarrow=False,
                       font=dict(size=11, color="#555"))


def _spans_decade(groups) -> bool:
    values = [v for c in groups for v in c["values"] if v and v > 0]
    return bool(values) and max(values) / min(values) > 10


def layer_heatmap_figure(layers: list[dict], value: str = "relative_distortion", *,
                         title: str | None = None) -> go.Figure:
    """A blocks × layer-kinds heatmap of one per-layer value of a point.

    Examples
    --------
    >>> rows = [dict(block=b, kind=k, relative_distortion=0.01 * (b + 1), rate=3.0,
    ...              predicted_gap_bits=0.1) for b in range(2) for k in ("q_proj", "down_proj")]
    >>> fig = layer_heatmap_figure(rows)
    >>> list(fig.data[0].x), list(fig.data[0].y)
    (['q', 'down'], [0, 1])
    """
    label, bar, log = LAYER_VALUES.get(value, (value, value, False))
    blocks, kinds, matrix = layer_matrix(layers, value)
    z = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix])
    shown = np.log10(np.where(z > 0, z, np.nan)) if log else z
    text = [[("—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}")
             for v in row] for row in matrix]
    fig = go.Figure(go.Heatmap(
        z=shown, x=[k.removesuffix("_proj") for k in kinds], y=blocks, colorscale="Viridis",
        name=value,
        customdata=text, hovertemplate="block %{y} · %{x}: %{customdata}<extra></extra>",
        colorbar=dict(title=dict(text=bar))))
    fig.update_yaxes(autorange="reversed", dtick=max(1, len(blocks) // 10))
    fig.update_xaxes(tickangle=-45)
    return style_figure(fig, title or label, "layer kind", "decoder block", height=520)
