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
    RATE_METRICS, parametric_code_length, parametric_coded_bits
Real weights
    layer_weights, weights_label, column_entropy_powers, predicted_distortion
Experiments
    sweep, table_to_csv, bundle_report
Errors
    WfvizError: the one error type for bad input; its message is one sentence.

See ``docs/architecture.md`` for the module map and ``../shared/docs/theory.md`` for the maths.
"""

from .bundles import list_bundles, load_bundle
from .covariance import Covariance
from .covariance_io import load_covariance, save_covariance, validate_covariance
from .errors import WfvizError
from .experiments import sweep, table_to_csv
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
    parametric_code_length,
    parametric_coded_bits,
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
    column_entropy_powers,
    gap_bits,
    gptq_ec_distortion,
    gptq_gap_bits,
    highrate_it_distortion,
    it_distortion,
    log2_am_gm,
    predicted_distortion,
    watersic_distortion,
)
from .waterfilling import distortion_rate_curve, reverse_waterfill
from .weights import layer_weights, weights_label

__version__ = "0.1.0"

__all__ = [
    "Covariance", "GPTQConfig", "GPTQECConfig", "QuantizeResult", "RATE_METRICS", "ROTATIONS",
    "RTNConfig", "SPACE_FILLING_LOSS", "SYNTHETIC_FAMILIES", "WATERSIC_GAP_BITS", "WaterSICConfig",
    "WfvizError", "bundle_report", "cholesky_diag", "coded_bits", "column_entropy_bits",
    "column_entropy_powers", "layer_weights", "parametric_code_length", "parametric_coded_bits",
    "predicted_distortion", "weights_label",
    "distortion_rate_curve", "gap_bits", "get_rotation", "gptq_ec_distortion", "gptq_gap_bits",
    "hadamard_matrix", "highrate_it_distortion", "it_distortion", "layer_stats", "list_bundles",
    "load_bundle", "load_covariance", "log2_am_gm", "measure_rate", "pooled_entropy_bits",
    "quantize", "rate_axis_label", "resolve_source", "reverse_waterfill", "rotated_d",
    "save_covariance", "sweep", "synthetic", "table_to_csv", "validate_covariance",
    "watersic_distortion",
]
