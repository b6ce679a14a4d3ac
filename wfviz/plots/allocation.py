"""Figures of a bit allocation across layers: the vessel of layers, the bits per layer as bars
and as a blocks × layer-kinds heatmap.

Inputs are a :class:`wfviz.allocation.RatePlan` and the :class:`wfviz.allocation.LayerCost`
list it was made from. Trace names are stable (tests find traces by name).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..allocation import KIND_SHORT, RatePlan, _curves
from .layer import CODED, INK, WATER, _positive_floor, _zeros_to, style_figure
from .model import layer_heatmap_figure

__all__ = ["layer_vessel_figure", "plan_bars_figure", "plan_heatmap_figure", "KIND_COLORS"]

KIND_COLORS = {"q": "#1f77b4", "k": "#aec7e8", "v": "#ff7f0e", "o": "#ffbb78",
               "gate": "#2ca02c", "up": "#98df8a", "down": "#d62728"}
"""One colour per layer kind (attention blues and oranges, MLP greens and red)."""
_KINDS = tuple(KIND_SHORT.values())
_LABEL_BG = "rgba(255,255,255,0.85)"  # labels stay legible over the bars they sit on


def _block_kind(name: str, layers_by_name: dict) -> tuple[int, str]:
    la = layers_by_name.get(name)
    if la is not None:
        return la.block, la.kind
    from ..plan_export import _parse

    return _parse(name)


def layer_vessel_figure(plan: RatePlan, layers) -> go.Figure:
    """The waterfilling vessel with layers in place of coordinates.

    Bars are ``s_l·κ_l`` (the layer's weighted high-rate constant), sorted largest first, on a
    log axis; over each, the water is the weighted distortion ``s_l·D_l(R_l)`` the plan leaves
    (``min(θ, s_l κ_l)`` in the high-rate model, away from the rate bounds); θ is the dashed
    line. What stands above the water is coded: a layer gets ``½log₂`` of that ratio in bits.
    Traces: ``"s·κ (vessel)"`` and ``"s·D (water)"``; θ is the first layout shape.

    Examples
    --------
    >>> from wfviz.allocation import LayerCost, allocate
    >>> ls = [LayerCost(f"l{i}", 0, "q", 10, 1.0, g, g) for i, g in enumerate((2.0, 0.0))]
    >>> fig = layer_vessel_figure(allocate(ls, 2.0), ls)
    >>> [t.name for t in fig.data], list(fig.data[0].customdata[:, 0])
    (['s·κ (vessel)', 's·D (water)'], ['l0', 'l1'])
    """
    layers = [la for la in layers if la.name in plan.rates]
    s = np.array([la.sensitivity for la in layers], dtype=float)
    kappa = np.array([la.kappa(plan.method) for la in layers])
    rates = np.array([plan.rates[la.name] for la in layers])
    curves = _curves(layers, plan.cost, plan.method)
    water = s * np.array([float(c.distortion(r)) for c, r in zip(curves, rates, strict=True)])
    vessel = s * kappa
    order = np.argsort(-vessel, kind="stable")
    floor = _positive_floor(np.r_[vessel, water])
    x = np.arange(1, len(layers) + 1)
    names = np.array([la.name for la in layers], dtype=object)[order]
    custom = np.column_stack([names, rates[order], vessel[order], water[order]])
    hover = ("%{customdata[0]}<br>s·κ %{customdata[2]:.3g} · s·D %{customdata[3]:.3g}"
             "<br>%{customdata[1]:.2f} bits/weight<extra></extra>")
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=_zeros_to(vessel[order], floor), name="s·κ (vessel)",
                         marker_color=CODED, opacity=0.55, customdata=custom,
                         hovertemplate=hover))
    fig.add_trace(go.Bar(x=x, y=_zeros_to(water[order], floor), name="s·D (water)",
                         marker_color=WATER, customdata=custom, hovertemplate=hover))
    fig.update_layout(barmode="overlay", bargap=0.05)
    theta = plan.theta
    if np.isfinite(theta) and theta > 0:
        fig.add_shape(type="line", xref="paper", x0=0, x1=1, y0=theta, y1=theta,
                      line=dict(color=INK, dash="dash", width=2))
        fig.add_annotation(xref="paper", x=1, y=np.log10(theta), yref="y",
                           text=f"θ = {theta:.3g}", showarrow=False, xanchor="right",
                           yanchor="bottom", font=dict(color=INK), bgcolor=_LABEL_BG)
    what = "s·κ" if plan.sensitivity == "none" else f"s·κ (s: {plan.sensitivity})"
    return style_figure(fig, f"Layers as a vessel: {plan.budget:.2f} bits/weight, water below "
                             "θ is distortion, the rest is coded",
                        "layer (largest s·κ first)", what, log_y=True, height=440)


def plan_bars_figure(plan: RatePlan, layers=()) -> go.Figure:
    """Bits per weight of each layer in processing order, coloured by layer kind, with the
    budget as a dotted line. One bar trace per kind (named ``q``, ``k`` …); hover names the
    layer.

    Examples
    --------
    >>> from wfviz.allocation import LayerCost, uniform_plan
    >>> ls = [LayerCost(f"model.layers.0.mlp.{k}_proj", 0, k, 8, 1., 0., 0.)
    ...       for k in ("up", "down")]
    >>> [t.name for t in plan_bars_figure(uniform_plan(ls, 3.0), ls).data]
    ['up', 'down']
    """
    by_name = {la.name: la for la in layers}
    names = list(plan.rates)
    kinds = [_block_kind(n, by_name)[1] for n in names]
    fig = go.Figure()
    for kind in [k for k in _KINDS if k in kinds] + sorted(set(kinds) - set(_KINDS)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        fig.add_trace(go.Bar(x=[i + 1 for i in idx], y=[plan.rates[names[i]] for i in idx],
                             name=kind, marker_color=KIND_COLORS.get(kind, "#9467bd"),
                             customdata=[names[i] for i in idx],
                             hovertemplate="%{customdata}<br>%{y:.2f} bits/weight"
                                           "<extra></extra>"))
    fig.add_shape(type="line", xref="paper", x0=0, x1=1, y0=plan.budget, y1=plan.budget,
                  line=dict(color=INK, dash="dot", width=2))
    fig.add_annotation(xref="paper", x=1, y=plan.budget, yref="y", showarrow=False,
                       text=f"budget {plan.budget:.2f}", xanchor="right", yanchor="bottom",
                       font=dict(color=INK), bgcolor=_LABEL_BG)
    fig.update_layout(bargap=0.1)
    return style_figure(fig, f"Bits per layer ({plan.plan}), in processing order",
                        "layer (processing order)", "bits per weight", height=400)


def plan_heatmap_figure(plan: RatePlan, layers=()) -> go.Figure:
    """The plan's bits per weight as a blocks × layer-kinds heatmap
    (:func:`wfviz.plots.model.layer_heatmap_figure` over ``bits``).

    Examples
    --------
    >>> from wfviz.allocation import LayerCost, uniform_plan
    >>> ls = [LayerCost(f"model.layers.{b}.self_attn.q_proj", b, "q", 8, 1., 0., 0.)
    ...       for b in range(2)]
    >>> fig = plan_heatmap_figure(uniform_plan(ls, 3.0))
    >>> list(fig.data[0].x), list(fig.data[0].y)
    (['q'], [0, 1])
    """
    by_name = {la.name: la for la in layers}
    rows = []
    for name, rate in plan.rates.items():
        block, kind = _block_kind(name, by_name)
        rows.append(dict(block=block, kind=f"{kind}_proj", bits=rate))
    fig = layer_heatmap_figure(rows, "bits", title=f"Bits per weight of each layer "
                                                   f"({plan.plan})")
    return fig.update_traces(colorbar=dict(title=dict(text="bits/weight")),
                             hovertemplate="block %{y} · %{x}: %{customdata} bits/weight"
                                           "<extra></extra>")
