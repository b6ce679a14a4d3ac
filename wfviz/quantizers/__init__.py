"""The quantization methods, one file each, behind one registry.

Every method has a frozen config dataclass and a function
``quantize_<method>(W, sigma, rate, config, *, rate_metric, progress, cancel, prepared)``
returning :class:`~wfviz.quantizers.base.MethodOutput`; ``W`` and ``sigma`` are torch tensors
already in the basis to quantize in. :func:`get_method` looks a method up by its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from ..errors import WfvizError
from .base import Cancelled, MethodOutput
from .gptq import GPTQConfig, GPTQPrepared, prepare_gptq, quantize_gptq
from .gptq_ec import (
    GPTQECConfig,
    prepare_gptq_ec,
    quantize_gptq_ec,
    quantize_gptq_ec_many,
    quantize_gptq_ec_rates,
)
from .rtn import RTNConfig, quantize_rtn

METHODS = {
    "rtn": "round to nearest on a symmetric per-row grid of 2^b levels (ignores Σ)",
    "gptq": "GPTQ (Frantar et al. 2022): SIC error feedback on a symmetric per-row grid",
    "gptq-ec": "entropy-coded GPTQ: one unclipped step for every column, rate measured",
    "watersic": "WaterSIC: one step in the whitened domain (waterfilling on the Cholesky diag)",
}
"""Method name → one-line description."""


@dataclass(frozen=True)
class MethodSpec:
    """How to run one method.

    Attributes
    ----------
    name : str
    config_cls : type
        The frozen config dataclass.
    quantize : callable
        ``quantize(W, sigma, rate, config, *, rate_metric, progress, cancel, prepared)``.
    prepare : callable
        ``prepare(sigma, config)`` → the Σ-only work to reuse across rates, or None.
    default_metric : str
        The rate metric used when the caller gives none.
    integer_rates : bool
        The rate is a whole number of grid bits (RTN, GPTQ) rather than a measured target.
    quantize_many : callable or None
        ``quantize_many(problems, rates, config, *, rate_metric, progress, cancel)`` with
        ``problems`` a sequence of ``(W, sigma, prepared)`` → ``[problem][rate]`` outputs,
        searched together in batched, stacked passes (the entropy-coded methods), or None.
    """

    name: str
    config_cls: type
    quantize: Callable
    prepare: Callable | None
    default_metric: str
    integer_rates: bool
    quantize_many: Callable | None = None

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.config_cls))


def _prepare_gptq(sigma, config: GPTQConfig):
    return prepare_gptq(sigma, config.percdamp, config.act_order,
                        dtype=getattr(torch, config.precision))


def _watersic_spec() -> MethodSpec:
    from .watersic import (
        WaterSICConfig,
        prepare_watersic,
        quantize_watersic,
        quantize_watersic_many,
    )

    return MethodSpec("watersic", WaterSICConfig, quantize_watersic, prepare_watersic,
                      "column_entropy", False, quantize_watersic_many)


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of a method name (see :data:`METHODS`).

    Examples
    --------
    >>> get_method("gptq-ec").default_metric
    'column_entropy'
    """
    if name == "rtn":
        return MethodSpec("rtn", RTNConfig, quantize_rtn, None, "log_cardinality", True)
    if name == "gptq":
        return MethodSpec("gptq", GPTQConfig, quantize_gptq, _prepare_gptq, "log_cardinality",
                          True)
    if name == "gptq-ec":
        return MethodSpec("gptq-ec", GPTQECConfig, quantize_gptq_ec, prepare_gptq_ec,
                          "column_entropy", False, quantize_gptq_ec_many)
    if name == "watersic":
        return _watersic_spec()
    raise WfvizError(f"Unknown method {name!r}; use one of {', '.join(METHODS)}.")


__all__ = ["METHODS", "Cancelled", "GPTQConfig", "GPTQECConfig", "GPTQPrepared", "MethodOutput",
           "MethodSpec", "RTNConfig", "get_method", "prepare_gptq", "prepare_gptq_ec",
           "quantize_gptq", "quantize_gptq_ec", "quantize_gptq_ec_many", "quantize_gptq_ec_rates",
           "quantize_rtn"]
