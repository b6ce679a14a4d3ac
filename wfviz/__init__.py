"""wfviz: how bits should be allocated when the weights of a linear layer are quantized.

A layer ``Y = W X`` is quantized to ``Ŵ``; the damage is ``tr((W−Ŵ) Σ_X (W−Ŵ)ᵀ)`` with
``Σ_X = E[XXᵀ]``. wfviz computes the information-theoretic limit (reverse waterfilling over the
eigenvalues of Σ_X), the Cholesky-domain predictions for GPTQ and WaterSIC in any basis, and runs
the quantizers themselves on numpy or torch arrays, CPU or GPU.

Sources and IO
    Covariance, synthetic, SYNTHETIC_FAMILIES, resolve_source, load_covariance,
    save_covariance, validate_covariance, list_bundles, load_bundle
Theory
    reverse_waterfill, distortion_rate_curve, cholesky_diag, log2_am_gm, gptq_gap_bits,
    it_distortion, highrate_it_distortion, watersic_distortion, gptq_ec_distortion, gap_bits,
    WATERSIC_GAP_BITS, SPACE_FILLING_LOSS, layer_stats, rotated_d
Rotations
    get_rotation, hadamard_matrix, ROTATIONS
Quantizers and rates
    quantize, QuantizeResult, RTNConfig, GPTQConfig, GPTQECConfig, WaterSICConfig,
    measure_rate, column_entropy_bits, pooled_entropy_bits, coded_bits, rate_axis_label,
    RATE_METRICS
Experiments
    sweep, table_to_csv, bundle_report
Whole models
    quantize_model, ModelQuantResult, LayerQuant, evaluate_model, ModelEval, LogProbStore,
    reference_store, load_texts, run_model_grid, ModelGridConfig
Errors
    WfvizError: the one error type for bad input; its message is one sentence.

See ``docs/architecture.md`` for the module map and ``../shared/docs/theory.md`` for the maths.
"""

from .bundles import list_bundles, load_bundle
from .covariance import Covariance
from .covariance_io import load_covariance, save_covariance, validate_covariance
from .errors import WfvizError
from .experiments import sweep, table_to_csv
from .model_eval import LogProbStore, ModelEval, evaluate_model, reference_store
from .model_grid import ModelGridConfig, run_model_grid
from .model_quant import LayerQuant, ModelQuantResult, quantize_model
from .model_text import load_texts
from .quantize import QuantizeResult, quantize
from .quantizers.gptq import GPTQConfig
from .quantizers.gptq_ec import GPTQECConfig
from .quantizers.rtn import RTNConfig
from .quantizers.watersic import WaterSICConfig
from .rates import (
    RATE_METRICS,
    coded_bits,
    column_entropy_bits,
    measure_rate,
    pooled_entropy_bits,
    rate_axis_label,
)
from .report import bundle_report
from .rotations import ROTATIONS, get_rotation, hadamard_matrix
from .sources import SYNTHETIC_FAMILIES, resolve_source, synthetic
from .stats import layer_stats, rotated_d
from .theory import (
    SPACE_FILLING_LOSS,
    WATERSIC_GAP_BITS,
    cholesky_diag,
    gap_bits,
    gptq_ec_distortion,
    gptq_gap_bits,
    highrate_it_distortion,
    it_distortion,
    log2_am_gm,
    watersic_distortion,
)
from .waterfilling import distortion_rate_curve, reverse_waterfill

__version__ = "0.1.0"

__all__ = [
    "Covariance", "GPTQConfig", "GPTQECConfig", "LayerQuant", "LogProbStore", "ModelEval",
    "ModelGridConfig", "ModelQuantResult", "QuantizeResult", "RATE_METRICS", "ROTATIONS",
    "RTNConfig", "SPACE_FILLING_LOSS", "SYNTHETIC_FAMILIES", "WATERSIC_GAP_BITS",
    "WaterSICConfig", "WfvizError", "bundle_report", "cholesky_diag", "coded_bits",
    "column_entropy_bits", "distortion_rate_curve", "evaluate_model", "gap_bits",
    "get_rotation", "gptq_ec_distortion", "gptq_gap_bits", "hadamard_matrix",
    "highrate_it_distortion", "it_distortion", "layer_stats", "list_bundles", "load_bundle",
    "load_covariance", "load_texts", "log2_am_gm", "measure_rate", "pooled_entropy_bits",
    "quantize", "quantize_model", "rate_axis_label", "reference_store", "resolve_source",
    "reverse_waterfill", "rotated_d", "run_model_grid", "save_covariance", "sweep", "synthetic",
    "table_to_csv", "validate_covariance", "watersic_distortion",
]
