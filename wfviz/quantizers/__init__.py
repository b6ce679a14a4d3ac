"""The quantization methods, one family per module, behind one registry keyed on config type.

Methods
    rtn         round to nearest (:class:`RTNConfig`, :func:`quantize_rtn`)
    gptq        GPTQ on a fixed grid (:class:`GPTQConfig`, :func:`quantize_gptq`)
    gptq-ec     entropy-coded GPTQ, one step (:class:`GPTQECConfig`, :func:`quantize_gptq_ec`)
    watersic    WaterSIC (:class:`WaterSICConfig`, :func:`quantize_watersic`)
Shared parts
    base        :class:`MethodOutput`, damped Cholesky, loop precision, side information
    search      the step search of the entropy-coded methods (:func:`search_rates`)

Every method has a frozen config dataclass and a function
``quantize_<method>(W, sigma, rate, config, *, rate_metric, progress, cancel, prepared)``
returning :class:`MethodOutput`; ``W`` and ``sigma`` are torch tensors already in the basis to
quantize in. :data:`REGISTRY` maps each config class to its :class:`MethodSpec`;
:func:`get_method` takes a config instance, a config class or a method name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from ..errors import Cancelled, WfvizError
from .base import MethodOutput
from .gptq import GPTQConfig, GPTQPrepared, prepare_gptq, quantize_gptq
from .gptq_ec import (
    GPTQECConfig,
    prepare_gptq_ec,
    quantize_gptq_ec,
    quantize_gptq_ec_many,
    quantize_gptq_ec_rates,
)
from .rtn import RTNConfig, quantize_rtn
from .search import RateCurveSearch, search_rates
from .watersic import (
    WaterSICConfig,
    WaterSICPrepared,
    prepare_watersic,
    quantize_watersic,
    quantize_watersic_many,
    quantize_watersic_rates,
)


@dataclass(frozen=True)
class MethodSpec:
    """How to run one method.

    Attributes
    ----------
    name : str
        The method's short name (``"gptq-ec"``).
    description : str
        One line for the UI and ``--help``.
    config_cls : type
        The frozen config dataclass.
    quantize : callable
        ``quantize(W, sigma, rate, config, *, rate_metric, progress, cancel, prepared)``.
    prepare : callable or None
        ``prepare(sigma, config)`` → the Σ-only work to reuse across rates.
    default_metric : str
        The rate metric used when the caller gives none.
    integer_rates : bool
        The rate is a whole number of grid bits (RTN, GPTQ) rather than a measured target.
    quantize_many : callable or None
        ``quantize_many(problems, rates, config, *, rate_metric, progress, cancel)`` with
        ``problems`` a sequence of ``(W, sigma, prepared)`` → ``[problem][rate]`` outputs,
        searched together in batched, stacked passes (the entropy-coded methods).
    """

    name: str
    description: str
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
    from .base import PRECISIONS

    return prepare_gptq(sigma, config.damping, config.act_order,
                        dtype=PRECISIONS[config.precision], dead_threshold=config.dead_threshold)


REGISTRY: dict[type, MethodSpec] = {spec.config_cls: spec for spec in (
    MethodSpec("rtn", "round to nearest on a symmetric per-row grid of 2^b levels (ignores Σ)",
               RTNConfig, quantize_rtn, None, "log_cardinality", True),
    MethodSpec("gptq", "GPTQ (Frantar et al. 2022): SIC error feedback on a symmetric per-row "
               "grid", GPTQConfig, quantize_gptq, _prepare_gptq, "log_cardinality", True),
    MethodSpec("gptq-ec", "entropy-coded GPTQ: one unclipped step for every column, rate "
               "measured", GPTQECConfig, quantize_gptq_ec, prepare_gptq_ec, "column_entropy",
               False, quantize_gptq_ec_many),
    MethodSpec("watersic", "WaterSIC: one step in the whitened domain (waterfilling on the "
               "Cholesky diagonal)", WaterSICConfig, quantize_watersic, prepare_watersic,
               "column_entropy", False, quantize_watersic_many),
)}
"""Config class → :class:`MethodSpec`, built once."""

METHODS = {spec.name: spec.description for spec in REGISTRY.values()}
"""Method name → one-line description."""

_BY_NAME = {spec.name: spec for spec in REGISTRY.values()}


def get_method(method) -> MethodSpec:
    """The :class:`MethodSpec` of a config instance, a config class or a method name.

    Examples
    --------
    >>> get_method("gptq-ec").default_metric
    'column_entropy'
    >>> get_method(WaterSICConfig(rescalers=True)).name
    'watersic'
    """
    if isinstance(method, str):
        if method not in _BY_NAME:
            raise WfvizError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")
        return _BY_NAME[method]
    cls = method if isinstance(method, type) else type(method)
    if cls not in REGISTRY:
        raise WfvizError(f"{cls.__name__} is not a method config; pass one of "
                         f"{', '.join(c.__name__ for c in REGISTRY)} or a method name.")
    return REGISTRY[cls]


__all__ = ["METHODS", "REGISTRY", "Cancelled", "GPTQConfig", "GPTQECConfig", "GPTQPrepared",
           "MethodOutput", "MethodSpec", "RTNConfig", "RateCurveSearch", "WaterSICConfig",
           "WaterSICPrepared", "get_method", "prepare_gptq", "prepare_gptq_ec",
           "prepare_watersic", "quantize_gptq", "quantize_gptq_ec", "quantize_gptq_ec_many",
           "quantize_gptq_ec_rates", "quantize_rtn", "quantize_watersic",
           "quantize_watersic_many", "quantize_watersic_rates", "search_rates"]
