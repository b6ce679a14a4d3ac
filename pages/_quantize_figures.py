"""Figures of the Quantize page: measured points against the high-rate theory lines."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from pages._figures import CODED, INK, WATER, style_figure
from wfviz.theory import (
    WATERSIC_GAP_BITS,
    gptq_ec_distortion,
    gptq_gap_bits,
    it_distortion,
    watersic_distortion,
)

_SYMBOLS = {"watersic": "circle", "gptq-ec": "diamond", "gptq": "square", "rtn": "x"}
_DASHES = ["dash", "dot", "dashdot", "longdash", "longdashdot"]
_ROTATION_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]


def _color(rotations: list[str], rotation: str) -> str:
    return _ROTATION_COLORS[rotations.index(rotation) % len(_ROTATION_COLORS)]


def _points(fig: go.Figure, rows: list[dict], rotations: list[str], y_key: str) -> None:
    for method in dict.fromkeys(r["method"] for r in rows):
        for rot in rotations:
            pts = [r for r in rows if r["method"] == method and r["rotation"] == rot]
            if pts:
                fig.add_trace(go.Scatter(
                    x=[p["rate"] for p in pts], y=[p[y_key] for p in pts], mode="markers",
                    name=f"{method} · {rot}",
                    marker=dict(symbol=_SYMBOLS.get(method, "circle"), size=10,
                                color=_color(rotations, rot))))


def dr_figure(rows: list[dict], eigenvalues: np.ndarray, d_by_rotation: dict[str, np.ndarray],
              rate_axis: str, variance: float = 1.0) -> go.Figure:
    """Measured distortion against the IT limit, WaterSIC and GPTQ-EC high-rate lines (log y)."""
    lo = min(r["rate"] for r in rows)
    hi = max(r["rate"] for r in rows)
    grid = np.linspace(max(0.0, lo - 0.25), hi + 0.25, 80)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=grid, y=it_distortion(eigenvalues, grid, variance=variance),
                             mode="lines", name="IT limit (exact waterfilling)",
                             line=dict(color=WATER, width=3)))
    fig.add_trace(go.Scatter(x=grid, y=watersic_distortion(eigenvalues, grid, variance=variance),
                             mode="lines", name="WaterSIC theory (2πe/12)·GM(λ)",
                             line=dict(color=CODED, width=2)))
    rotations = list(d_by_rotation)
    for i, (rot, d) in enumerate(d_by_rotation.items()):
        fig.add_trace(go.Scatter(x=grid, y=gptq_ec_distortion(d, grid, variance=variance),
                                 mode="lines", name=f"GPTQ-EC theory · {rot} (AM(d))",
                                 line=dict(color=_color(rotations, rot),
                                           dash=_DASHES[i % len(_DASHES)], width=1.5)))
    _points(fig, rows, rotations, "distortion")
    return style_figure(fig, "Distortion per weight vs rate: measured points and theory", rate_axis,
                        "D = tr((W−Ŵ)Σ(W−Ŵ)ᵀ)/(a·n) (log)", log_y=True, height=520)


def gap_figure(rows: list[dict], d_by_rotation: dict[str, np.ndarray],
               rate_axis: str) -> go.Figure:
    """Measured gap to the IT limit in bits, with the high-rate predictions as lines."""
    rates = [r["rate"] for r in rows]
    ends = [min(rates) - 0.1, max(rates) + 0.1]
    fig = go.Figure(go.Scatter(x=ends, y=[WATERSIC_GAP_BITS] * 2, mode="lines",
                               name=f"WaterSIC theory: {WATERSIC_GAP_BITS:.4f} bit",
                               line=dict(color=CODED, width=2)))
    rotations = list(d_by_rotation)
    for i, (rot, d) in enumerate(d_by_rotation.items()):
        pred = WATERSIC_GAP_BITS + gptq_gap_bits(d)
        fig.add_trace(go.Scatter(x=ends, y=[pred] * 2, mode="lines",
                                 name=f"GPTQ-EC theory · {rot}: {pred:.3f} bit",
                                 line=dict(color=_color(rotations, rot),
                                           dash=_DASHES[i % len(_DASHES)], width=1.5)))
    _points(fig, rows, rotations, "gap_bits")
    fig.add_hline(y=0.0, line=dict(color=INK, width=1))
    return style_figure(fig, "Gap to the information-theoretic limit, ½·log2(D / D_IT(R))",
                        rate_axis, "gap (bits per weight)", height=460)


def column_rate_figure(measured: np.ndarray, predicted: np.ndarray, rotation: str) -> go.Figure:
    """WaterSIC's measured per-column entropies against R + ½log2(d_j/GM(d)), clipped at 0."""
    x = np.arange(measured.size)
    fig = go.Figure(go.Scatter(x=x, y=measured, mode="markers", name="measured (column entropy)",
                               marker=dict(size=4, color=CODED)))
    fig.add_trace(go.Scatter(x=x, y=predicted, mode="lines", name="theory R + ½log2(d_j/GM(d))",
                             line=dict(color=INK, width=1)))
    return style_figure(fig, f"WaterSIC bits per column, basis: {rotation}", "column j",
                        "bits per weight (per-column entropy of the codes)", height=420)
