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


# --- Real (non-Gaussian, unequal-variance) columns at high rate ---------------------------------
#
# Column j of W (its a rows read as samples of one random variable w_j) has differential entropy
# h_j bits and entropy power N_j = 2^{2 h_j} / (2πe): the variance of the Gaussian with the same
# entropy, N_j <= Var(w_j) with equality for a Gaussian column.

COLUMN_ENTROPY_ESTIMATORS = ("binned", "gaussian")
"""Estimators of :func:`column_entropy_powers`: a fine-histogram plug-in, or the variance."""


def entropy_power(h_bits):
    """Entropy power ``N = 2^{2h} / (2πe)`` of a differential entropy ``h`` in bits.

    Examples
    --------
    >>> round(float(entropy_power(0.5 * np.log2(2 * np.pi * np.e * 9.0))), 9)  # N(0, 9)
    9.0
    """
    return np.exp2(2.0 * np.asarray(h_bits, dtype=np.float64)) / (2 * math.pi * math.e)


def column_entropy_powers(W, *, estimator: str = "binned", bins_per_std: float = 4.0):
    """Entropy power ``N_j`` of every column of ``W``, its rows read as samples.

    ``"binned"``: ``h_j = H(⌊w_j/δ_j⌋) + (K_j − 1)/(2a ln 2) + log2 δ_j`` with ``δ_j`` the
    column's standard deviation over ``bins_per_std``, ``K_j`` the occupied bins and ``a`` the
    rows. The plug-in entropy of ``a`` samples reads low by about ``(K − 1)/(2a ln 2)``
    (Miller–Madow), which the second term puts back; a finer ``δ`` shrinks the discretisation
    error (``≈ δ² J/24`` nats, ``J`` the column's Fisher information) but raises ``K`` and the
    residual bias. At 4 bins per standard deviation both stay below 0.01 bit for Gaussian and
    Laplace columns of 576 rows or more (up to 0.03 bit low at 256 rows). ``"gaussian"``: the
    column's variance, the entropy power if the column were Gaussian (an upper bound). A
    constant column has ``N_j = 0``.

    Parameters
    ----------
    W : array_like, shape (a, n)
    estimator : {'binned', 'gaussian'}
    bins_per_std : float
        Bins per standard deviation of the binned estimator.

    Returns
    -------
    ndarray, shape (n,)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> W = np.c_[rng.standard_normal(20000), rng.laplace(size=20000)]
    >>> ratio = column_entropy_powers(W) / W.var(0)   # Gaussian: 1, Laplace: e/π ≈ 0.865
    >>> np.abs(ratio - [1.0, math.e / math.pi]).max() < 0.02
    np.True_
    """
    from .rates import column_entropy_bits

    if estimator not in COLUMN_ENTROPY_ESTIMATORS:
        raise WfvizError(f"Unknown entropy estimator {estimator!r}; choose one of "
                         f"{', '.join(COLUMN_ENTROPY_ESTIMATORS)}.")
    w = np.asarray(W.detach().cpu() if isinstance(W, torch.Tensor) else W, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] < 2 or w.shape[1] == 0 or not np.all(np.isfinite(w)):
        raise WfvizError(f"W must be a finite (a, n) matrix with at least 2 rows, got shape "
                         f"{w.shape}; pass the weight matrix, rows as samples.")
    if not (math.isfinite(bins_per_std) and bins_per_std > 0):
        raise WfvizError(f"bins_per_std must be a positive number (e.g. 4), got {bins_per_std}.")
    std = w.std(axis=0)
    if estimator == "gaussian":
        return std**2
    live = std > 0
    out = np.zeros(w.shape[1])
    if not live.any():
        return out
    step = std[live] / bins_per_std
    cells = np.floor(w[:, live] / step).astype(np.int64)
    out[live] = entropy_power(column_entropy_bits(cells, miller_madow=True) + np.log2(step))
    return out


def _log2_gm_positive(x, what: str) -> float:
    arr = _nonneg_vector(x, what)
    if np.any(arr == 0):
        raise WfvizError(f"{what} has zeros (a constant weight column or a singular Σ), where "
                         "the high-rate prediction is undefined; drop those columns or damp Σ.")
    return float(np.mean(np.log2(arr)))


def watersic_distortion_from_entropy(entropy_powers, d, rate):
    """WaterSIC's high-rate distortion for real columns: ``(2πe/12) GM(N_j d_j) 2^{-2R}``.

    Derivation. With ``Σ = L Lᵀ`` WaterSIC rounds the whitened column ``j`` (``√d_j w_j`` plus
    the fed-back errors of the decided columns, which are ``O(Δ)`` and leave its entropy
    unchanged at high rate) with one step ``c``: weight-domain step ``c/√d_j``, error weight
    ``d_j``, so every column adds ``c²/12`` and ``D = c²/12``. Column ``j`` costs
    ``h_j + ½ log2 d_j − log2 c`` bits, so ``R = mean_j(h_j + ½ log2 d_j) − log2 c`` and
    ``D = (1/12) 2^{2 mean_j h_j} GM(d) 2^{-2R} = (2πe/12) GM(N_j d_j) 2^{-2R}``. Equal ``c``
    stays optimal (the Lagrangian of ``Σ d_j Δ_j²/12`` against ``Σ (h_j − log2 Δ_j)``). For
    i.i.d. Gaussian columns of variance ``σ²``, ``N_j = σ²`` and this is
    :func:`watersic_distortion`: ``(2πe/12) σ² GM(d) 2^{-2R}``, ``GM(d) = GM(λ)``. Unlike
    ``GM(d)``, ``GM(N_j d_j)`` depends on the basis: ``N_j`` are the entropy powers of the
    rotated ``W``'s columns and ``d`` the Cholesky diagonal of the rotated Σ.

    Parameters
    ----------
    entropy_powers : array_like, shape (n,)
        ``N_j`` (:func:`column_entropy_powers`), in the basis of ``d``.
    d : array_like, shape (n,)
        WaterSIC-order Cholesky diagonal ``Var(X_j | X_<j)`` (:func:`cholesky_diag`).
    rate : float or array_like
        Entropy bits per weight, side information excluded.

    Examples
    --------
    >>> n = np.array([2.0, 2.0])
    >>> bool(np.isclose(watersic_distortion_from_entropy(n, [1.0, 4.0], 3.0),
    ...                 watersic_distortion([1.0, 4.0], 3.0, variance=2.0)))
    True
    """
    n_log = _log2_gm_positive(entropy_powers, "The entropy powers")
    d_log = _log2_gm_positive(d, "The Cholesky diagonal d")
    if np.size(entropy_powers) != np.size(d):
        raise WfvizError("The entropy powers and d must have one entry per column each.")
    return SPACE_FILLING_LOSS * 2.0 ** (n_log + d_log) * np.exp2(-2 * _rate_array(rate))


def gptq_ec_distortion_from_entropy(entropy_powers, d, rate):
    """Entropy-coded GPTQ's high-rate distortion for real columns:
    ``(2πe/12) GM(N_j) AM(d) 2^{-2R}``.

    Derivation. GPTQ-EC rounds column ``j`` (plus the fed-back errors of the earlier columns,
    ``O(Δ)``) with one weight-domain step ``Δ`` for all columns; GPTQ decides the columns first
    to last, so column ``j``'s error weighs ``d_j = Var(X_j | X_>j)`` and
    ``D = (Δ²/12) AM(d)``. Column ``j`` costs ``h_j − log2 Δ`` bits, so
    ``log2 Δ = mean_j h_j − R`` and ``D = (1/12) 2^{2 mean_j h_j} AM(d) 2^{-2R}
    = (2πe/12) GM(N_j) AM(d) 2^{-2R}``. Against :func:`watersic_distortion_from_entropy` in
    the same basis the ratio is ``AM(d)/GM(d)`` again (``GM(N_j d_j) = GM(N_j) GM(d)``), so the
    GPTQ–WaterSIC gap does not depend on the weights; for i.i.d. Gaussian columns this is
    :func:`gptq_ec_distortion` with ``variance = σ²``.

    Parameters
    ----------
    entropy_powers : array_like, shape (n,)
    d : array_like, shape (n,)
        GPTQ-order Cholesky diagonal (``cholesky_diag(..., order="gptq")``).
    rate : float or array_like
        Entropy bits per weight, side information excluded.

    Examples
    --------
    >>> bool(np.isclose(gptq_ec_distortion_from_entropy([2.0, 2.0], [1.0, 3.0], 1.0),
    ...                 gptq_ec_distortion([1.0, 3.0], 1.0, variance=2.0)))
    True
    """
    n_log = _log2_gm_positive(entropy_powers, "The entropy powers")
    am = float(np.mean(_nonneg_vector(d, "The Cholesky diagonal d")))
    if np.size(entropy_powers) != np.size(d):
        raise WfvizError("The entropy powers and d must have one entry per column each.")
    return SPACE_FILLING_LOSS * 2.0**n_log * am * np.exp2(-2 * _rate_array(rate))


PREDICTED_METHODS = ("watersic", "gptq-ec")
"""Methods :func:`predicted_distortion` has a high-rate formula for."""


def predicted_distortion(W, sigma, rate, *, method: str, rotation: str = "identity",
                         seed: int = 0, damping: float = 0.0, estimator: str = "binned"):
    """High-rate distortion ``tr((W−Ŵ)Σ(W−Ŵ)ᵀ)/(a·n)`` predicted for these very weights.

    Rotates ``W`` and Σ as :func:`wfviz.quantize` does (``W Qᵀ``, ``Q Σ Qᵀ``), estimates the
    rotated columns' entropy powers (:func:`column_entropy_powers`) and applies
    :func:`watersic_distortion_from_entropy` (``d`` in WaterSIC's order) or
    :func:`gptq_ec_distortion_from_entropy` (``d`` in GPTQ's order).

    Parameters
    ----------
    W : array_like, shape (a, n)
        The weights (rows are outputs).
    sigma : array_like or Covariance, shape (n, n)
        Σ_X; a :class:`~wfviz.covariance.Covariance` must hold the full matrix.
    rate : float or array_like
        Entropy bits per weight, side information excluded.
    method : {'watersic', 'gptq-ec'}
    rotation, seed
        As in :func:`wfviz.quantize`.
    damping : float
        Relative damping of Σ before the Cholesky (the quantizers' default is 1e-4).
    estimator : {'binned', 'gaussian'}
        Entropy-power estimator; ``"gaussian"`` gives the Gaussian-weight prediction with each
        column's own variance.

    Returns
    -------
    float or ndarray

    Notes
    -----
    On SmolLM2-135M-Instruct's block 15 (dequantized Q4_1 GGUF weights against the bundle's
    Σ_X; ``benchmarks/bench_real_theory.py``), WaterSIC and GPTQ-EC at 5 and 6 bits in the
    identity and Hadamard bases measured within 0.05 bit of this prediction at the codes'
    Miller–Madow entropy (0.002–0.048 bit better than predicted, most at 6 bits with 576 rows,
    where that estimate of the codes' entropy still reads low) and 0.005–0.023 bit worse at the
    ``parametric_coded`` payload rate (which exceeds the entropy by the model's misfit); the
    Gaussian prediction with each column's variance was off by up to 0.10 bit in the identity
    basis.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_normal((4000, 4))
    >>> S = np.array([[2.0, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    >>> p = predicted_distortion(W, S, 6.0, method="watersic")
    >>> bool(abs(gap_bits(p, watersic_distortion(np.linalg.eigvalsh(S), 6.0))) < 0.01)
    True
    """
    from .rotations import get_rotation

    if method not in PREDICTED_METHODS:
        raise WfvizError(f"No high-rate prediction for method {method!r}; choose one of "
                         f"{', '.join(PREDICTED_METHODS)}.")
    matrix = getattr(sigma, "matrix", sigma)
    if matrix is None:
        raise WfvizError("A prediction for real weights needs the full Σ_X; this source has "
                         "only its eigenvalues, so pick a layer stored with its full matrix.")
    S = np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix,
                   dtype=np.float64)
    w = np.asarray(W.detach().cpu() if isinstance(W, torch.Tensor) else W, dtype=np.float64)
    if w.ndim != 2 or S.shape != (w.shape[1], w.shape[1]):
        raise WfvizError(f"Σ must be n×n for W of shape (a, n); got W {w.shape} and Σ "
                         f"{S.shape}.")
    rot = get_rotation(rotation, w.shape[1], seed=seed, sigma=S)
    w_rot, S_rot = rot.apply_layer(w, S)
    powers = column_entropy_powers(w_rot, estimator=estimator)
    if method == "watersic":
        return watersic_distortion_from_entropy(powers, cholesky_diag(S_rot, damping=damping),
                                                rate)
    return gptq_ec_distortion_from_entropy(
        powers, cholesky_diag(S_rot, damping=damping, order="gptq"), rate)
