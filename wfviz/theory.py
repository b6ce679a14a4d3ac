"""High-rate theory of GPTQ and WaterSIC as successive interference cancellation (SIC).

With ``Σ_X = L Lᵀ`` the innovation variances ``d_j = L_jj²`` decide everything at high rate:

- IT limit (reverse waterfilling): ``D_IT(R) = σ² GM(λ) 2^{-2R}`` once every coordinate is
  above the water;
- WaterSIC (same step in the whitened domain): ``D_WS = (2πe/12) σ² GM(d) 2^{-2R}``, and
  ``GM(d) = det(Σ_X)^{1/n} = GM(λ)`` for every basis and ordering;
- entropy-coded GPTQ (same step in the weight domain): ``D_GPTQ = (2πe/12) σ² AM(d) 2^{-2R}``.

Geometric means are computed from sums of logarithms, never from a determinant (which under- or
overflows for any realistic ``n``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

from .errors import WfvizError, all_finite
from .waterfilling import distortion_rate_curve

SPACE_FILLING_LOSS = 2 * math.pi * math.e / 12
"""``2πe/12 ≈ 1.423289``: MSE of an entropy-coded scalar quantizer over the Gaussian limit."""

WATERSIC_GAP_BITS = 0.5 * math.log2(SPACE_FILLING_LOSS)
"""``½ log2(2πe/12) ≈ 0.254614`` bit: WaterSIC's high-rate distance to the IT limit."""


def _nonneg_vector(x, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise WfvizError(f"{what} must be a non-empty 1-D array.")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise WfvizError(f"{what} must be finite and >= 0.")
    return arr


def _damped(sigma: np.ndarray, damping: float) -> np.ndarray:
    if not (np.isfinite(damping) and damping >= 0):
        raise WfvizError(f"Damping must be a number >= 0 (e.g. 0.01), got {damping}.")
    if damping == 0:
        return sigma
    return sigma + damping * float(np.mean(np.diag(sigma))) * np.eye(sigma.shape[0])


def _cholesky_failed(damping: float) -> WfvizError:
    hint = "0.01" if damping == 0 else f"more than {damping:g}"
    return WfvizError(
        f"Σ_X is not positive definite, so its Cholesky factorisation failed; retry with damping "
        f"{hint} (a multiple of the mean diagonal added to the diagonal)."
    )


CHOLESKY_ORDERS = ("watersic", "gptq")
"""Conditioning orders of :func:`cholesky_diag`: WaterSIC decides the columns last to first
(``d_j = Var(X_j | X_<j)``), GPTQ first to last (``d_j = Var(X_j | X_>j)``)."""


def cholesky_diag(sigma, *, damping: float = 0.0, order: str = "watersic"):
    """Innovation variances ``d = diag(L)²`` of ``Σ + damping · mean(diag Σ) · I = L Lᵀ``.

    ``order="watersic"`` gives ``d_j = Var(X_j | X_0..X_{j-1})``, the variance each column sees
    when the columns are decided last to first (WaterSIC); ``order="gptq"`` gives
    ``d_j = Var(X_j | X_{j+1}..X_{n-1})``, what GPTQ's first-to-last order sees (``1/(2U_jj²)``
    with ``U`` the upper Cholesky factor of ``H⁻¹ = (2Σ)⁻¹``). Both have the same product, the
    (damped) determinant, but not the same AM, so the predicted GPTQ gap uses ``"gptq"``.

    Parameters
    ----------
    sigma : ndarray or torch.Tensor, shape (n, n)
        Symmetric positive (semi)definite Σ_X.
    damping : float
        Relative damping, as GPTQ's ``percdamp``: the diagonal gets ``damping`` times the mean
        diagonal added before factorising. 0 means none.
    order : {"watersic", "gptq"}
        The conditioning order (see above); ``d`` is returned in the original column order.

    Returns
    -------
    ndarray or torch.Tensor, shape (n,)
        float64; numpy for numpy input, a tensor on the input's device for tensor input.

    Raises
    ------
    WfvizError
        If the (damped) matrix is not positive definite; the message suggests a damping.

    Examples
    --------
    >>> cholesky_diag(np.array([[4.0, 2.0], [2.0, 2.0]])).tolist()
    [4.0, 1.0]
    >>> np.round(cholesky_diag(np.array([[4.0, 2.0], [2.0, 2.0]]), order="gptq"), 12).tolist()
    [2.0, 2.0]
    """
    if order not in CHOLESKY_ORDERS:
        raise WfvizError(f"order must be one of {', '.join(CHOLESKY_ORDERS)}, got {order!r}.")
    if order == "gptq":  # the reversed matrix's natural order, put back in place
        flipped = (sigma.flip((0, 1)) if isinstance(sigma, torch.Tensor)
                   else np.asarray(sigma)[::-1, ::-1])
        d = cholesky_diag(flipped, damping=damping)
        return d.flip(0) if isinstance(d, torch.Tensor) else d[::-1].copy()
    if isinstance(sigma, torch.Tensor):
        return _cholesky_diag_torch(sigma, damping)
    s = np.asarray(sigma, dtype=np.float64)
    _check_square(s.shape, bool(np.all(np.isfinite(s))))
    s = _damped(s, float(damping))
    try:
        chol = scipy.linalg.cholesky(s, lower=True, check_finite=False)
    except np.linalg.LinAlgError as exc:
        raise _cholesky_failed(damping) from exc
    return np.diag(chol) ** 2


def _check_square(shape, finite: bool) -> None:
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise WfvizError(f"Σ_X must be a non-empty square matrix, got shape {tuple(shape)}.")
    if not finite:
        raise WfvizError("Σ_X contains NaN or infinite entries; fix the data before factorising.")


def _cholesky_diag_torch(sigma: torch.Tensor, damping: float) -> torch.Tensor:
    s = sigma.to(torch.float64)
    _check_square(s.shape, all_finite(s))
    if not (math.isfinite(damping) and damping >= 0):
        raise WfvizError(f"Damping must be a number >= 0 (e.g. 0.01), got {damping}.")
    if damping:
        shift = damping * torch.diagonal(s).mean()
        s = s + shift * torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    chol, info = torch.linalg.cholesky_ex(s)
    if int(info) != 0:
        raise _cholesky_failed(damping)
    return torch.diagonal(chol) ** 2


def log2_am_gm(x) -> float:
    """``log2(AM(x) / GM(x))`` in bits, from sums of logarithms.

    Parameters
    ----------
    x : array_like, shape (n,)
        Non-negative numbers (eigenvalues or Cholesky diagonals).

    Returns
    -------
    float
        0 for a constant vector (the all-zero vector included); ``inf`` when some but not all
        entries are 0 (the geometric mean is 0: a singular Σ_X has an unbounded GPTQ gap).

    Examples
    --------
    >>> round(log2_am_gm([1.0, 4.0]), 6)  # log2(2.5 / 2)
    0.321928
    """
    arr = _nonneg_vector(x, "The values")
    top = arr.max()
    if top == 0 or np.all(arr == top):
        return 0.0
    if np.any(arr == 0):
        return math.inf
    scaled = arr / top  # keeps mean and logs away from overflow for huge entries
    return max(0.0, float(np.log2(scaled.mean()) - np.mean(np.log2(scaled))))


def gptq_gap_bits(d) -> float:
    """High-rate gap of entropy-coded GPTQ over WaterSIC: ``½ log2(AM(d)/GM(d))`` bits.

    Examples
    --------
    >>> round(gptq_gap_bits([1.0, 4.0]), 6)
    0.160964
    """
    return 0.5 * log2_am_gm(d)


def _log2_gm(x) -> float:
    arr = _nonneg_vector(x, "The values")
    if np.any(arr == 0):
        return -math.inf
    return float(np.mean(np.log2(arr)))


def _rate_array(rate):
    r = np.asarray(rate, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise WfvizError(f"Rates must be finite and >= 0 bits, got {rate!r}.")
    return r


def _variance(variance) -> float:
    v = float(variance)
    if not (math.isfinite(v) and v > 0):
        raise WfvizError(f"The weight variance must be a positive number, got {variance}.")
    return v


def it_distortion(eigenvalues, rate, variance: float = 1.0):
    """Exact information-theoretic distortion ``D_IT(R)`` by reverse waterfilling.

    Examples
    --------
    >>> float(it_distortion([4.0, 1.0], 0.5))
    1.0
    """
    return distortion_rate_curve(eigenvalues, rate, variance)


def highrate_it_distortion(eigenvalues, rate, variance: float = 1.0):
    """High-rate IT distortion ``σ² GM(λ) 2^{-2R}`` (exact once ``θ <= σ² λ_min``).

    Examples
    --------
    >>> float(highrate_it_distortion([4.0, 1.0], 1.0))
    0.5
    """
    gm = 2.0 ** _log2_gm(eigenvalues)
    return _variance(variance) * gm * np.exp2(-2 * _rate_array(rate))


def watersic_distortion(eigenvalues, rate, variance: float = 1.0):
    """WaterSIC's high-rate distortion ``(2πe/12) σ² GM(λ) 2^{-2R}``, the same in every basis.

    Examples
    --------
    >>> round(float(watersic_distortion([1.0], 0.0)), 6)
    1.423289
    """
    return SPACE_FILLING_LOSS * highrate_it_distortion(eigenvalues, rate, variance)


def gptq_ec_distortion(d, rate, variance: float = 1.0):
    """Entropy-coded GPTQ's high-rate distortion ``(2πe/12) σ² AM(d) 2^{-2R}``.

    ``d`` is the Cholesky diagonal in the basis and column order GPTQ runs in.

    Examples
    --------
    >>> round(float(gptq_ec_distortion([1.0, 3.0], 1.0)), 6)
    0.711645
    """
    am = float(np.mean(_nonneg_vector(d, "The Cholesky diagonal d")))
    return SPACE_FILLING_LOSS * _variance(variance) * am * np.exp2(-2 * _rate_array(rate))


def gap_bits(distortion_a, distortion_b):
    """Rate gap ``½ log2(D_a / D_b)`` in bits that makes distortion ``a`` match ``b`` at high rate.

    Examples
    --------
    >>> gap_bits(4.0, 1.0)
    1.0
    """
    a = np.asarray(distortion_a, dtype=np.float64)
    b = np.asarray(distortion_b, dtype=np.float64)
    if np.any(~(a > 0)) or np.any(~(b > 0)) or not np.all(np.isfinite(a * b)):
        raise WfvizError("Distortions compared in bits must be finite and > 0.")
    out = 0.5 * np.log2(a / b)
    return float(out) if out.ndim == 0 else out
