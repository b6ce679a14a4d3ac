"""What every quantizer method returns, and the knobs they share."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch

from ..errors import Cancelled, WfvizError  # noqa: F401 (Cancelled re-exported)

SIDE_INFO_BITS = 16.0
"""Bits charged for every stored number of side information (one fp16 scale, step or index)."""

FP32_UNIT_ROUNDOFF = 2.0**-24
"""Unit roundoff of float32, for the a-priori noise bounds of the column loops."""

DEFAULT_NOISE_LIMIT = 3e-3
"""Largest float32 noise bound, in steps, that a loop of precision ``"auto"`` accepts
(:func:`loop_dtype`); noise of ``δ`` steps costs about ``δ²`` of the step² of error."""

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
"""Names of the loop precisions a config may ask for (``"auto"`` is decided per pass)."""

POTRF_MIN_N = 3072
"""From this size on, CPU Cholesky factorizations call LAPACK directly (see :func:`cholesky_ex`)."""

_POTRF = {torch.float32: scipy.linalg.lapack.spotrf, torch.float64: scipy.linalg.lapack.dpotrf}

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass
class MethodOutput:
    """The result of one method on (W, Σ) given in the basis the method works in.

    Attributes
    ----------
    W_hat : torch.Tensor, shape (a, n)
        Reconstruction in the same basis as the W that was passed in.
    codes : torch.Tensor, shape (a, n), int64
        The integer codes.
    scales : dict[str, torch.Tensor]
        Side information needed to dequantize (per-row scales, per-column steps, rescalers...).
    rate : float
        Measured bits per weight under ``rate_metric``, side information included.
    rate_metric : str
        One of ``wfviz.rates.RATE_METRICS``.
    column_rates : numpy.ndarray, shape (n,)
        Bits per weight of each column under the same metric.
    side_info_bits : float
        Total side-information bits charged for the whole matrix.
    info : dict
        Method-specific facts worth showing (step c, damping used, dead columns, search steps).
    """

    W_hat: torch.Tensor
    codes: torch.Tensor
    scales: dict
    rate: float
    rate_metric: str
    column_rates: np.ndarray
    side_info_bits: float
    info: dict = field(default_factory=dict)


MAX_RELATIVE_DAMPING = 0.1
"""Largest relative damping that :func:`damped_cholesky` escalates to before giving up."""


def cholesky_ex(A: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Lower Cholesky factor of a symmetric ``A`` (not modified) and LAPACK's ``info``.

    From n = :data:`POTRF_MIN_N` on the CPU this calls LAPACK's ``potrf`` through SciPy on the
    row-major buffer read as column-major (the same matrix, ``A`` being symmetric) and keeps
    the garbage triangle until one in-place ``tril_``: ``torch.linalg.cholesky_ex`` copies to
    column-major and back. Smaller matrices use torch, whose threads would compete with
    SciPy's BLAS threads (timings in ``benchmarks/NOTES.md``). Other devices use torch.
    ``info > 0`` means not positive definite.

    Examples
    --------
    >>> L, info = cholesky_ex(torch.tensor([[4.0, 2.0], [2.0, 5.0]], dtype=torch.float64))
    >>> L.tolist(), info
    ([[2.0, 0.0], [1.0, 2.0]], 0)
    """
    if A.device.type != "cpu" or A.dtype not in _POTRF or not A.is_contiguous() \
            or A.shape[0] < POTRF_MIN_N:
        L, info = torch.linalg.cholesky_ex(A)
        return L, int(info)
    # potrf "upper" on the column-major view of A computes R with A = RᵀR; that buffer read
    # row-major again is Rᵀ, the lower factor
    c, info = _POTRF[A.dtype](A.numpy().T, lower=False, overwrite_a=False, clean=False)
    return torch.from_numpy(c.T).tril_(), int(info)


def loop_dtype(precision: str, noise_limit: float, *, columns: int, ymax_over_step: float,
               gain: float) -> torch.dtype:
    """The precision of a SIC column loop: float32 unless its rounding noise could matter.

    ``"auto"`` bounds the float32 rounding noise of a residual target, in units of the step,
    by ``u·√columns·(ymax/step + gain)`` (``u = 2⁻²⁴``; ``gain`` is how much the feedback can
    amplify errors already made) and takes float64 when the bound exceeds ``noise_limit``.
    Noise ``δ`` steps adds about ``δ²`` to a column's ``1/12`` step² of rounding error.

    Examples
    --------
    >>> loop_dtype("auto", 3e-3, columns=1024, ymax_over_step=100.0, gain=2.0)
    torch.float32
    >>> loop_dtype("auto", 3e-3, columns=1024, ymax_over_step=1e5, gain=2.0)
    torch.float64
    """
    if precision != "auto":
        return PRECISIONS[precision]
    bound = FP32_UNIT_ROUNDOFF * math.sqrt(columns) * (ymax_over_step + gain)
    return torch.float32 if bound <= noise_limit else torch.float64


def fp16_value(x: float) -> float:
    """``x`` rounded to fp16 (what 16 bits of side information store) when fp16 holds it as a
    normal number; else ``x`` itself.

    Examples
    --------
    >>> fp16_value(0.1), fp16_value(1e-9)
    (0.0999755859375, 1e-09)
    """
    half = float(torch.tensor(x, dtype=torch.float16))
    return half if 2.0**-14 <= abs(half) <= 65504.0 else x


def check_damping(damping: float, dead_threshold: float) -> None:
    """Raise unless ``damping >= 0`` and ``0 <= dead_threshold < 1`` (every config's check)."""
    if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping >= 0):
        raise WfvizError(f"damping must be a number >= 0 (e.g. 0.01), got {damping!r}.")
    if not (isinstance(dead_threshold, (int, float)) and math.isfinite(dead_threshold)
            and 0 <= dead_threshold < 1):
        raise WfvizError(f"dead_threshold must be in [0, 1) (e.g. 1e-3), got "
                         f"{dead_threshold!r}.")


def check_search(rate_tol: float, max_search_passes: int) -> None:
    """Raise unless the step search's knobs are usable."""
    if not (math.isfinite(rate_tol) and rate_tol > 0) or int(max_search_passes) < 2:
        raise WfvizError(f"rate_tol must be > 0 and max_search_passes >= 2, got {rate_tol} and "
                         f"{max_search_passes}.")


def check_precision(precision: str) -> None:
    """Raise unless ``precision`` is ``"auto"`` or a name of :data:`PRECISIONS`."""
    if precision != "auto" and precision not in PRECISIONS:
        raise WfvizError(f"precision must be 'auto', 'float32' or 'float64', got {precision!r}.")


def stack_converted(matrices, dtype: torch.dtype, device) -> torch.Tensor:
    """``P × n × n`` in ``dtype`` on ``device``, for a batched column loop.

    One matrix gives a view of its conversion (no n×n copy when it has the dtype already:
    1.6 GB at n = 14336); several fill one buffer by converting copies, so that no
    per-matrix casts are held on the side.

    Examples
    --------
    >>> stack_converted([torch.eye(2), 2 * torch.eye(2)], torch.float64, "cpu")[1].tolist()
    [[2.0, 0.0], [0.0, 2.0]]
    """
    if len(matrices) == 1:
        return matrices[0].to(device, dtype)[None]
    n = matrices[0].shape[0]
    out = torch.empty((len(matrices), n, n), dtype=dtype, device=device)
    for k, m in enumerate(matrices):
        out[k].copy_(m)
    return out


def widest_dtype(dtypes) -> torch.dtype:
    """The floating dtype with the most bits: what a loop shared by several problems needs.

    Examples
    --------
    >>> widest_dtype([torch.float32, torch.float64, torch.float32])
    torch.float64
    """
    return max(dtypes, key=lambda d: torch.finfo(d).bits)


def damped_cholesky(A: torch.Tensor, relative: float, *,
                    escalate: bool = True) -> tuple[torch.Tensor, float, float]:
    """Lower Cholesky factor of ``A + δ·mean(diag A)·I``, escalating ``δ`` when it fails.

    ``δ`` starts at ``relative`` and is multiplied by 10 (from at least ``1e-6``) after every
    failed factorization, up to :data:`MAX_RELATIVE_DAMPING`: a nearly singular Σ (fewer
    calibration tokens than features, float rounding of a rank-deficient matrix) then still
    factors, and the caller reports the ``δ`` that was used. ``A`` is a scratch copy: the
    damping is added to its diagonal in place.

    Parameters
    ----------
    A : torch.Tensor, shape (n, n), float64
        Symmetric matrix to factor; overwritten on the diagonal.
    relative : float
        The requested relative damping ``δ``.
    escalate : bool
        Retry with more damping; False raises at the first failure (a float32 attempt whose
        caller falls back to float64 before damping more).

    Returns
    -------
    L : torch.Tensor
        Lower-triangular factor.
    relative_used : float
        The ``δ`` that succeeded (``relative`` unless it had to escalate).
    damping_abs : float
        ``δ · mean(diag A)``, the amount added to the diagonal.

    Raises
    ------
    WfvizError
        If even ``δ = 0.1`` does not make ``A`` positive definite.

    Examples
    --------
    >>> A = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # singular
    >>> L, used, absolute = damped_cholesky(A, 0.0)
    >>> used
    1e-06
    """
    mean = float(torch.diagonal(A).mean())
    added, rel = 0.0, float(relative)
    while True:
        A.diagonal().add_(rel * mean - added)
        added = rel * mean
        L, info = cholesky_ex(A)
        if info == 0:
            return L, rel, added
        del L
        rel = max(10.0 * rel, 1e-6)
        if not escalate or rel > MAX_RELATIVE_DAMPING * (1 + 1e-9):
            raise WfvizError(
                f"Σ is not positive definite even with damping {MAX_RELATIVE_DAMPING:g} × mean "
                f"diagonal (it has clearly negative eigenvalues); check how Σ was computed "
                f"(it must be E[xxᵀ] over real inputs).")
