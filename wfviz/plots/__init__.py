"""The app's figures as plotly builders: numpy and sweep points in, ``go.Figure`` out.

A notebook gets the same figures as the app from ``import wfviz``::

    fig = wfviz.plots.vessel_figure(cov.eigenvalues, sol.theta)

One layer's Σ_X (:mod:`wfviz.plots.layer`)
    spectrum_figure, diagonal_figure, heatmap_figure, vessel_figure, rates_figure,
    dr_curve_figure, cholesky_figure, column_rates_figure; helpers style_figure, plot_index,
    block_average, correlation_matrix, top_channels, log_tick_text, wrap_title
A sweep (:mod:`wfviz.plots.sweeps`)
    dr_figure, gap_figure, column_rate_figure, gptq_gaps
A whole model (:mod:`wfviz.plots.model`)
    model_curve_figure (perplexity or KL vs measured bits per weight), layer_heatmap_figure
    (blocks × layer kinds), model_label, LAYER_VALUES
A bit allocation across layers (:mod:`wfviz.plots.allocation`)
    layer_vessel_figure (layers sorted by s·κ, the water level θ), plan_bars_figure (bits per
    layer in processing order, the budget), plan_heatmap_figure (blocks × layer kinds)

Large spectra are thinned to at most :data:`MAX_POINTS` points per trace; trace names are
stable (the tests find traces by name). Streamlit is never imported here.
"""

from .allocation import KIND_COLORS, layer_vessel_figure, plan_bars_figure, plan_heatmap_figure
from .layer import (
    CODED,
    HEATMAP_SIZE,
    INK,
    MAX_BARS,
    MAX_POINTS,
    OUTLIER_RATIO,
    WATER,
    block_average,
    cholesky_figure,
    column_rates_figure,
    correlation_matrix,
    diagonal_figure,
    dr_curve_figure,
    heatmap_figure,
    label_positions,
    log_tick_text,
    plot_index,
    rates_figure,
    spectrum_figure,
    style_figure,
    top_channels,
    vessel_figure,
    wrap_title,
)
from .model import LAYER_VALUES, layer_heatmap_figure, model_curve_figure, model_label
from .sweeps import column_rate_figure, dr_figure, gap_figure, gptq_gaps

__all__ = ["CODED", "HEATMAP_SIZE", "INK", "KIND_COLORS", "LAYER_VALUES", "MAX_BARS",
           "MAX_POINTS", "OUTLIER_RATIO", "WATER", "block_average", "cholesky_figure",
           "column_rate_figure", "column_rates_figure", "correlation_matrix", "diagonal_figure",
           "dr_curve_figure", "dr_figure", "gap_figure", "gptq_gaps", "heatmap_figure",
           "label_positions", "layer_heatmap_figure", "layer_vessel_figure", "log_tick_text",
           "model_curve_figure", "model_label", "plan_bars_figure", "plan_heatmap_figure",
           "plot_index", "rates_figure", "spectrum_figure", "style_figure", "top_channels",
           "vessel_figure", "wrap_title"]
