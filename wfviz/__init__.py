"""wfviz: how bits should be allocated when the weights of a linear layer are quantized.

A layer ``Y = W X`` is quantized to ``Ŵ``; the damage is ``tr((W−Ŵ) Σ_X (W−Ŵ)ᵀ)`` with
``Σ_X = E[XXᵀ]``. wfviz computes the information-theoretic limit (reverse waterfilling over the
eigenvalues of Σ_X), the Cholesky-domain predictions for GPTQ and WaterSIC in any basis, and runs
the quantizers themselves on numpy or torch arrays, CPU or GPU.

Sources and IO
    Covariance, synthetic, SYNTHETIC_FAMILIES, parse_source, resolve_source, load_covariance,
    save_covariance, validate_covariance, list_bundles, load_bundle
Theory
    reverse_waterfill, distortion_rate_curve, cholesky_diag, log2_am_gm, gptq_gap_bits,
    it_distortion, highrate_it_distortion, watersic_distortion, gptq_ec_distortion, gap_bits,
    WATERSIC_GAP_BITS, SPACE_FILLING_LOSS, layer_stats, rotated_d
Rotations
    get_rotation, hadamard_matrix, ROTATIONS
Quantizers and rates
    quantize, QuantizeResult, METHODS, RTNConfig, GPTQConfig, GPTQECConfig, WaterSICConfig,
    quantize_rtn, quantize_gptq, quantize_gptq_ec, quantize_watersic, measure_rate,
    column_entropy_bits, pooled_entropy_bits, coded_bits, parametric_code_length,
    parametric_coded_bits, rate_axis_label, RATE_METRICS
Real weights
    layer_weights, weights_label, column_entropy_powers, predicted_distortion
Experiments
    sweep, iter_sweep, SweepPoint, gap_table, table_to_csv, bundle_report
Whole models
    quantize_model, ModelQuantResult, LayerQuant, evaluate_model, ModelEval, LogProbStore,
    reference_store, load_texts, run_model_grid, ModelGridConfig, load_results,
    shipped_results, ModelResults, PointRequest, start_point
Bit allocation across layers
    allocate, LayerCost, RatePlan, uniform_plan, heuristic_plan, GreedyRates, layer_costs,
    measured_costs, noise_sensitivity, fisher_sensitivity, to_llama_cpp, to_gptqmodel_dynamic,
    save_costs, load_costs, shipped_costs (stored inputs, for the app)
Figures (plotly)
    plots: the figure builders of the app
Words
    GLOSSARY, glossary_markdown: the terms the app uses, defined in a sentence or three
Errors
    WfvizError (bad input, one sentence), ResourceError (out of memory, time-outs),
    Cancelled, WfvizWarning

Names are imported on first use, so ``import wfviz`` is cheap (torch is loaded only when a
name that needs it is used). See ``docs/architecture.md`` for the module map and
``docs/theory.md`` for the maths.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "allocation": ("GreedyRates", "LayerCost", "RatePlan", "allocate", "heuristic_plan",
                   "layer_costs", "load_costs", "measured_costs", "save_costs", "shipped_costs",
                   "uniform_plan"),
    "basis": ("WorkingBasis", "working_basis"),
    "bundles": ("list_bundles", "load_bundle"),
    "covariance": ("Covariance",),
    "covariance_io": ("load_covariance", "save_covariance", "validate_covariance"),
    "errors": ("Cancelled", "ResourceError", "WfvizError", "WfvizException", "WfvizWarning"),
    "experiments": ("SweepPoint", "gap_table", "iter_sweep", "sweep", "table_to_csv"),
    "glossary": ("GLOSSARY", "glossary_markdown"),
    "model_eval": ("LogProbStore", "ModelEval", "evaluate_model", "reference_store"),
    "model_grid": ("ModelGridConfig", "run_model_grid"),
    "model_jobs": ("PointRequest", "start_point"),
    "model_quant": ("LayerQuant", "ModelQuantResult", "quantize_model"),
    "model_results": ("ModelResults", "load_results", "shipped_results"),
    "model_text": ("load_texts",),
    "quantize_layer": ("QuantizeResult", "method_config", "quantize"),
    "plan_export": ("to_gptqmodel_dynamic", "to_llama_cpp"),
    "quantizers": ("METHODS", "GPTQConfig", "GPTQECConfig", "RTNConfig", "WaterSICConfig",
                   "quantize_gptq", "quantize_gptq_ec", "quantize_rtn", "quantize_watersic"),
    "rates": ("RATE_METRICS", "coded_bits", "column_entropy_bits", "measure_rate",
              "parametric_code_length", "parametric_coded_bits", "pooled_entropy_bits",
              "rate_axis_label"),
    "report": ("bundle_report",),
    "rotations": ("ROTATIONS", "get_rotation", "hadamard_matrix"),
    "sensitivity": ("fisher_sensitivity", "noise_sensitivity"),
    "sources": ("SYNTHETIC_FAMILIES", "parse_source", "resolve_source", "synthetic"),
    "stats": ("layer_stats", "rotated_d"),
    "theory": ("SPACE_FILLING_LOSS", "WATERSIC_GAP_BITS", "cholesky_diag",
               "column_entropy_powers", "gap_bits", "gptq_ec_distortion", "gptq_gap_bits",
               "highrate_it_distortion", "it_distortion", "log2_am_gm", "predicted_distortion",
               "watersic_distortion"),
    "waterfilling": ("distortion_rate_curve", "reverse_waterfill"),
    "weights": ("layer_weights", "weights_label"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_SUBMODULES = ("plots",)

__all__ = sorted([*_WHERE, *_SUBMODULES])


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'wfviz' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
