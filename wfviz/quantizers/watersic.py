"""WaterSIC: one lattice step in the whitened domain, successive interference cancellation.

With ``Σ = L Lᵀ`` (``L`` lower, from the damped Σ) the loss ``tr((W−Ŵ)Σ(W−Ŵ)ᵀ)`` equals
``‖(W−Ŵ)L‖²`` and column ``j`` of ``(W−Ŵ)L`` only involves columns ``j..n−1`` of ``W − Ŵ``.
Deciding the columns from the last to the first and feeding every decided column's error forward
makes the error of each whitened column exactly its own rounding error. WaterSIC rounds every
whitened column with the same step ``c`` (weight-domain step ``α_j = c / L_jj``), which is
waterfilling on the Cholesky diagonal ``d_j = L_jj²`` and sits ``½ log2(2πe/12) ≈ 0.2546`` bit
above the information-theoretic limit at high rate, in every basis.

Implementation choices (see ``benchmarks/bench_watersic.py`` for the measurements):

- **Error-feedback form.** Column ``j`` is quantized from
  ``y_j = L_jj W_j + Σ_{k>j} (W_k − Ŵ_k) L_kj``, the same residual target as the authors'
  ``Y = WL`` minus the decided contributions, but it needs no ``W L`` product. The feedback is
  GPTQ-style lazy batching: inside a block of ``block_size`` columns sequential rank-1 updates
  touch only the block; the feedback to all earlier columns is one GEMM per block. The total work
  is about ``a n² / 2`` multiply-adds, a quarter of ``W Σ`` plus ``Σ Σ`` at ``a = n``; one
  float32 pass measured 0.63× the time of those two products at a = n = 4096 on 2 threads.
- **Precision.** The pass runs in float32 unless an a-priori bound on the float32 rounding noise
  of the residual targets exceeds ``fp32_noise_limit`` times the step (high rate, or an
  ill-conditioned ``L`` whose feedback amplifies errors); then it runs in float64. The noise bound
  is ``u · √n · (max|y|/c + max_j ‖(L_kj / L_kk)_{k>j}‖)``, ``u = 2⁻²⁴``; rounding noise ``δc``
  in a target adds ``≈ δ² c²`` to that column's ``c²/12`` error, so ``δ = 3·10⁻³`` costs about
  ``10⁻⁴`` relative distortion. The search decides the precision at every round, for the
  smallest step of the round, so every accepted code comes from a pass at least as precise as
  its own step needs. The Cholesky
  factorization and the rescalers are always float64. The bound is conservative: float32 and
  float64 passes at one step gave distortions within ``2·10⁻⁴`` (power-law Σ, up to 10 bits)
  to ``3·10⁻³`` (condition number ``e²⁰``), of either sign (codes flip near ties), on Haar-rotated
  Σ with a = n = 1024 (``benchmarks/bench_watersic.py --precision``).
- **Rate search.** ``c`` is searched on ``log2 c`` (the rate is close to linear in ``−log2 c``
  with slope ≈ 1 at high rate) on the full matrix, started from the high-resolution formula
  ``c = 2^{−h}·√12·GM(√s_i·L_ii)``. Several target rates are searched together
  (:func:`quantize_watersic_rates`, :class:`~wfviz.quantizers.search.RateCurveSearch`): each
  round is *one* SIC pass over copies of W stacked side by side, one candidate step per target
  still searching, so the per-column loop overhead is paid once per round, not once per rate
  (six rates at n = 1536, a = 256 take two or three rounds). The accepted codes are those of
  the best evaluated pass, so no extra pass is run for the answer, and the reported rate is the
  one measured on those codes.
- **Rescalers** ``Ŵ = diag(T) Z diag(α ∘ Γ)``, fitted after the SIC by alternating exact least
  squares (:func:`fit_rescalers`), are **off by default**: they cost 16 bits per row and did not
  pay for them. Measured at a = n = 2048 on a Haar-rotated power-law Σ, column entropy, equal
  measured rate, side information charged (``benchmarks/bench_watersic.py --skip-4096
  --skip-reference --rescaler-ablation``): with i.i.d. Gaussian rows, on was worse by 0.0072,
  0.0072, 0.0076 and 0.0079 bit at 2, 3, 4 and 6 bits (the 16/n = 0.0078 bit of ``T`` minus a
  fitted gain below 0.001 bit, because the per-column LS gain already does most of the work);
  with log-normal row norms (σ = 0.5), on was better by 0.009 bit at 2 bits and worse by 0.0005,
  0.0055 and 0.0069 bit at 3, 4 and 6 bits. The fit took 2.6–3.5× the time of the rest. Turn
  them on for real weights at about 2 bits or below, or to reproduce the authors' recipe.

Side information (bits charged for the whole matrix, 16 bits for every stored number):
16 per live column (the merged column scale ``α_j Γ_j``, or ``α_j γ_j`` without rescalers),
16 per row when the rescalers are on (``T``), and 16 per dead column index. By default the
reconstruction uses those scales rounded to fp16 (column scales relative to one shared
power-of-two exponent, which is not charged); the error feedback inside the SIC uses the exact
values. The rounding adds a relative weight error of about ``2⁻¹¹/√3`` rms, which is ``< 0.001``
bit up to about 7 bits per weight and grows at higher rates (``fp16_scales=False`` removes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import WfvizError, all_finite
from ..rates import RATE_METRICS, log2_step_for_entropy, measure_rate
from .base import (
    CancelFn,
    Cancelled,
    MethodOutput,
    ProgressFn,
    damped_cholesky,
    stack_converted,
    widest_dtype,
)
from .gptq import SUB_BLOCK
from .search import RateCurveSearch, padded

SIDE_INFO_BITS = 16.0
"""Bits charged for every stored scale and every dead-column index (one fp16 each)."""

_FP32_UNIT_ROUNDOFF = 2.0**-24
_GAMMA_CLIP = (-0.1, 1.5)
_LINE_SEARCH_FRACTIONS = (0.5, 0.25, 0.125, 0.0625)


@dataclass(frozen=True)
class WaterSICConfig:
    """Knobs of WaterSIC.

    Attributes
    ----------
    damping : float
        Relative damping: ``damping · mean(diag Σ)`` is added to the diagonal before the Cholesky.
    dead_threshold : float
        A feature is dead when its ``Σ_jj < dead_threshold · median(diag Σ)`` (or ``≤ 0``).
    ls_gain : bool
        Per-column least-squares gain ``γ_j = ⟨z, y⟩ / (c ‖z‖²)`` inside the error feedback.
    rescalers : bool
        Fit diagonal row/column rescalers ``T``, ``Γ`` after the SIC (:func:`fit_rescalers`).
    block_size : int
        Columns per lazy-update block of the SIC.
    precision : str
        ``"auto"`` (float32 unless the noise bound asks for float64), ``"float32"`` or
        ``"float64"``.
    fp32_noise_limit : float
        Largest float32 noise bound, relative to the step, that ``"auto"`` accepts.
    rate_tol : float
        The rate search stops when the measured rate is within this many bits of the target.
    max_search_passes : int
        Most rounds of the rate search; each round is one SIC pass that stacks one candidate
        step per target still searching.
    rescaler_max_iter : int
        Most alternating iterations of the rescaler fit.
    rescaler_tol : float
        The rescaler fit stops when the relative loss change falls below this.
    fp16_scales : bool
        Reconstruct from the stored scales rounded to fp16 (the 16 bits charged for them);
        the column scales share one power-of-two exponent so that fp16's range never binds.

    Examples
    --------
    >>> WaterSICConfig(rescalers=False).ls_gain
    True
    """

    damping: float = 1e-4
    dead_threshold: float = 1e-3
    ls_gain: bool = True
    rescalers: bool = False
    block_size: int = 128
    precision: str = "auto"
    fp32_noise_limit: float = 3e-3
    rate_tol: float = 0.01
    max_search_passes: int = 24
    rescaler_max_iter: int = 100
    rescaler_tol: float = 3e-4
    fp16_scales: bool = True

    def __post_init__(self):
        if not (math.isfinite(self.damping) and self.damping >= 0):
            raise WfvizError(f"WaterSIC damping must be a number >= 0 (e.g. 1e-4), got "
                             f"{self.damping}.")
        if not (math.isfinite(self.dead_threshold) and 0 <= self.dead_threshold < 1):
            raise WfvizError(f"dead_threshold must be in [0, 1) (e.g. 1e-3), got "
                             f"{self.dead_threshold}.")
        if self.precision not in ("auto", "float32", "float64"):
            raise WfvizError(f"precision must be 'auto', 'float32' or 'float64', got "
                             f"{self.precision!r}.")
        if int(self.block_size) < 1:
            raise WfvizError(f"block_size must be a positive integer, got {self.block_size}.")
        if not (self.rate_tol > 0 and self.rescaler_tol > 0):
            raise WfvizError("rate_tol and rescaler_tol must be positive; use e.g. 0.01 and 3e-4.")
        if self.max_search_passes < 2 or self.rescaler_max_iter < 0:
            raise WfvizError("max_search_passes must be >= 2 and rescaler_max_iter >= 0.")


@dataclass(frozen=True)
class WaterSICPrepared:
    """What depends on Σ only and can be reused across rates, weights and calls.

    Attributes
    ----------
    n : int
        Number of features (columns of W), dead ones included.
    live : torch.Tensor, int64, shape (m,)
        Indices of the live features, in increasing order.
    dead : torch.Tensor, int64, shape (n - m,)
        Indices of the dead features (restored as exact zero columns).
    L : torch.Tensor, float64, shape (m, m)
        Lower Cholesky factor of the damped live block of Σ.
    sigma_live : torch.Tensor, float64, shape (m, m)
        The undamped live block of Σ (loss and rescalers use it).
    damping_abs : float
        The absolute damping added to the diagonal.
    feedback_gain : float
        ``max_j ‖(L_kj / L_kk)_{k>j}‖``, how much the feedback can amplify rounding noise.
    damping_used : float
        The relative damping that factored (``config.damping`` unless the Cholesky failed and
        it was escalated, see :func:`~wfviz.quantizers.base.damped_cholesky`).
    """

    n: int
    live: torch.Tensor
    dead: torch.Tensor
    L: torch.Tensor
    sigma_live: torch.Tensor
    damping_abs: float
    feedback_gain: float
    damping_used: float = 0.0
    _cast: dict = field(default_factory=dict, repr=False, compare=False)

    def L_as(self, dtype: torch.dtype) -> torch.Tensor:
        """``L`` in ``dtype``, converted once and kept (a search runs several passes)."""
        if dtype == self.L.dtype:
            return self.L
        if dtype not in self._cast:
            self._cast[dtype] = self.L.to(dtype)
        return self._cast[dtype]

    @property
    def log2_det(self) -> float:
        """``log2 det`` of the damped live Σ, as ``Σ_j log2 L_jj²``."""
        return float(2 * torch.log2(torch.diagonal(self.L)).sum())


@dataclass
class PassResult:
    """One SIC pass at a fixed step ``c`` (all tensors over the full ``n`` columns).

    Attributes
    ----------
    codes : torch.Tensor, int64, shape (a, n)
        Integer codes, zero in dead columns.
    alpha : torch.Tensor, float64, shape (n,)
        Weight-domain steps ``c / L_jj`` (0 in dead columns).
    gamma : torch.Tensor, float64, shape (n,)
        Per-column gains used in the feedback (1 when ``ls_gain`` is off, 0 for all-zero columns).
    c : float
        The whitened step.
    dtype : torch.dtype
        Precision the pass ran in.
    """

    codes: torch.Tensor
    alpha: torch.Tensor
    gamma: torch.Tensor
    c: float
    dtype: torch.dtype

    @property
    def W_hat(self) -> torch.Tensor:
        """Reconstruction ``Z diag(α ∘ γ)``, float64, shape (a, n)."""
        return self.codes.to(torch.float64) * (self.alpha * self.gamma)


def _check_sigma(sigma, values: bool = True) -> torch.Tensor:
    """Σ as float64 after checks; ``values=False`` (a prepared factor exists) checks the shape."""
    if not isinstance(sigma, torch.Tensor):
        raise WfvizError("Σ must be a torch.Tensor; convert it with torch.as_tensor(sigma).")
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1] or sigma.shape[0] == 0:
        raise WfvizError(f"Σ must be a non-empty square matrix, got shape {tuple(sigma.shape)}.")
    if not values:
        return sigma
    s = sigma.to(torch.float64)
    if not all_finite(s):
        raise WfvizError("Σ contains NaN or infinite entries; fix the statistics first.")
    return s


def prepare_watersic(sigma: torch.Tensor, config: WaterSICConfig = WaterSICConfig()):
    """Dead features, damping and the float64 Cholesky factor of Σ, reusable across rates.

    Parameters
    ----------
    sigma : torch.Tensor, shape (n, n)
        Σ_X in the basis to quantize in (symmetric positive semidefinite).
    config : WaterSICConfig
        Supplies ``damping`` and ``dead_threshold``.

    Returns
    -------
    WaterSICPrepared

    Raises
    ------
    WfvizError
        If Σ is not square and finite, has no live feature, or the live block stays indefinite
        with the largest damping that the retry allows.

    Examples
    --------
    >>> prep = prepare_watersic(torch.diag(torch.tensor([4.0, 0.0, 1.0])))
    >>> prep.dead.tolist(), [round(v, 3) for v in torch.diagonal(prep.L).tolist()]
    ([1], [2.0, 1.0])
    """
    s = _check_sigma(sigma)
    diag = torch.diagonal(s)
    med = float(diag.abs().median())
    dead_mask = (diag <= 0) | (diag.abs() < config.dead_threshold * med)
    live = torch.nonzero(~dead_mask).flatten()
    if live.numel() == 0:
        raise WfvizError("Every feature of Σ has zero variance; there is nothing to quantize.")
    # No copy of Σ unless features are dead: at n = 14336 every n×n float64 array is 1.6 GB.
    s_live = s if live.numel() == s.shape[0] else s.index_select(0, live).index_select(1, live)
    damped = s_live.clone()
    L, damping_used, damp = damped_cholesky(damped, config.damping)
    del damped
    return WaterSICPrepared(
        n=s.shape[0], live=live, dead=torch.nonzero(dead_mask).flatten(), L=L,
        sigma_live=s_live, damping_abs=damp, feedback_gain=_feedback_gain(L),
        damping_used=damping_used,
    )


def _feedback_gain(L: torch.Tensor, rows: int = 2048) -> float:
    """``max_j ‖(L_kj / L_kk)_{k>j}‖``, summed over blocks of rows to stay at O(rows·n) memory.

    The column sums are a product with a row of ones: a reduction over the rows of a
    row-major block runs ~2x slower.
    """
    sq = torch.zeros(1, L.shape[0], dtype=L.dtype, device=L.device)
    for r0 in range(0, L.shape[0], rows):
        block = (L[r0:r0 + rows] / torch.diagonal(L)[r0:r0 + rows, None]).square_()
        sq.addmm_(torch.ones(1, block.shape[0], dtype=L.dtype, device=L.device), block)
    return float((sq - 1).clamp_min(0).sqrt().max())  # the diagonal term is exactly 1


def _pass_dtype(W_live: torch.Tensor, prep: WaterSICPrepared, c: float, precision: str,
                noise_limit: float) -> torch.dtype:
    if precision != "auto":
        return getattr(torch, precision)
    ymax = float(W_live.abs().max()) * float(torch.diagonal(prep.L).max()) if W_live.numel() else 0
    bound = _FP32_UNIT_ROUNDOFF * math.sqrt(prep.L.shape[0]) * (ymax / c + prep.feedback_gain)
    return torch.float32 if bound <= noise_limit else torch.float64


def _sic_blocked(Wt, L, steps, ls_gain, block, cancel):
    """Blocked SIC on stacked transposed live weights, optionally for several problems at once.

    ``Wt`` is ``m × (B·a)``: ``B`` copies of the ``a`` rows side by side, copy ``b`` rounded
    with the whitened step ``steps[b]`` (rows are independent, so one loop serves ``B`` steps).
    With a leading problem axis (``Wt``: ``P × m × (B·a)``, ``L``: ``P × m × m``, ``steps``:
    ``P × B``) ``P`` problems with their own factors run in the same loop.
    Returns the codes ``Zt`` (shape of ``Wt``) and the gains ``γ`` (``[P ×] m × B``).

    The column loop is bound by per-operation overhead (each column is only ``P·B·a``
    numbers), so every per-column view is made once up front and the loop body issues about a
    dozen tensor operations; ``γ`` is recovered afterwards from the weight-domain scales.
    """
    if Wt.ndim == 3 and Wt.shape[0] == 1:  # 2-D GEMMs: baddbmm_ costs ~1.7x addmm_ per update
        Zt, gamma = _sic_blocked(Wt[0], L[0], steps[0], ls_gain, block, cancel)
        return Zt[None], gamma[None]
    update = torch.Tensor.addmm_ if Wt.ndim == 2 else torch.Tensor.baddbmm_
    m, width = Wt.shape[-2:]
    B = steps.shape[-1]
    a = width // B
    diag = torch.diagonal(L, dim1=-2, dim2=-1)
    row_step = steps.repeat_interleave(a, dim=-1)
    # one-element tensors: an op with a Python scalar costs ~3x one with a tensor here
    inv_diag = (1.0 / diag).unsqueeze(-1).unbind(-2)
    Yt = Wt * diag[..., None]  # row j holds L_jj W_j plus the feedback received so far
    Et = torch.empty_like(Wt)
    Zt = torch.empty_like(Wt)
    ys, zs = Yt.unbind(-2), Zt.unbind(-2)
    zvs, yvs, wvs, evs = (x.view(*x.shape[:-1], B, a).unbind(-3) for x in (Zt, Yt, Wt, Et))
    e_rows = Et.unsqueeze(-2).unbind(-3)
    scale = Wt.new_empty((*Wt.shape[:-2], m, B))  # α_k γ_k of every copy
    scale_rows, scales = scale.unbind(-2), scale.unsqueeze(-1).unbind(-3)
    for end in range(m, 0, -block):
        if cancel is not None and cancel():
            raise Cancelled("WaterSIC was cancelled.")
        start = max(0, end - block)
        for k in range(end - 1, start - 1, -1):
            torch.div(ys[k], row_step, out=zs[k])
            torch.round(zs[k], out=zs[k])  # half to even; in-place round_() is ~6x slower
            zv = zvs[k]
            if ls_gain:
                # α_k γ_k = ⟨z, y⟩ / (‖z‖² L_kk); z = 0 gives ⟨z, y⟩ = 0, a zero column
                zz = torch.linalg.vecdot(zv, zv).clamp_min_(1)
                torch.linalg.vecdot(zv, yvs[k], out=scale_rows[k]).div_(zz).mul_(inv_diag[k])
            else:
                torch.mul(steps, inv_diag[k], out=scale_rows[k])
            torch.addcmul(wvs[k], zv, scales[k], value=-1.0, out=evs[k])
            # two-level lazy feedback, as in GPTQ's loop: rank-1 (a K=1 GEMM) inside a
            # sub-block, one GEMM per sub-block for the rest of the block
            s2 = end - (end - 1 - k) // SUB_BLOCK * SUB_BLOCK
            s1 = max(start, s2 - SUB_BLOCK)
            if k > s1:
                update(Yt[..., s1:k, :], L[..., k, s1:k, None], e_rows[k])
            elif s1 > start:
                update(Yt[..., start:s1, :], L[..., s1:s2, start:s1].mT, Et[..., s1:s2, :])
        if start > 0:
            update(Yt[..., :start, :], L[..., start:end, :start].mT, Et[..., start:end, :])
    gamma = scale * diag[..., None] / steps[..., None, :] if ls_gain else torch.ones_like(scale)
    return Zt, gamma


def _check_step(c) -> float:
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise WfvizError(f"The WaterSIC step c must be a positive number, got {c}.")
    return float(c)


def watersic_passes(W: torch.Tensor, prep: WaterSICPrepared, steps, *, ls_gain: bool = True,
                    dtype: torch.dtype | None = None, block_size: int = 128,
                    cancel: CancelFn | None = None) -> list[PassResult]:
    """Quantize W with WaterSIC at several fixed whitened steps in one stacked SIC pass.

    Parameters are those of :func:`watersic_pass`, with ``steps`` a sequence of steps ``c``;
    ``dtype`` defaults to the precision that the smallest step needs.

    Returns
    -------
    list of PassResult
        One per step, in the order given.

    Examples
    --------
    >>> prep = prepare_watersic(torch.eye(2, dtype=torch.float64), WaterSICConfig(damping=0))
    >>> W = torch.tensor([[0.26, -1.4]])
    >>> [p.codes.tolist() for p in watersic_passes(W, prep, [0.5, 1.0], ls_gain=False)]
    [[[1, -3]], [[0, -1]]]
    """
    steps = [_check_step(c) for c in steps]
    if dtype is None:
        dtype = _pass_dtype(W[:, prep.live], prep, min(steps), "auto",
                            WaterSICConfig.fp32_noise_limit)
    return _stacked_passes([(W, prep, steps)], prep.L_as(dtype)[None], ls_gain, dtype,
                           block_size, cancel)[0]


def _stacked_passes(jobs, L, ls_gain, dtype, block_size, cancel) -> list[list[PassResult]]:
    """One SIC loop for ``jobs`` = [(W, prep, steps)] of equal ``a``, live count and steps.

    ``L`` is the problems' live factors stacked in ``dtype`` (``P × m × m``).
    """
    Wt = torch.stack([W[:, prep.live].T.to(dtype).repeat(1, len(steps))
                      for W, prep, steps in jobs])
    cs = torch.tensor([steps for _, _, steps in jobs], dtype=dtype, device=Wt.device)
    Zt, gamma_live = _sic_blocked(Wt, L, cs, ls_gain, int(block_size), cancel)
    del Wt
    return [_pass_results(W, prep, steps, Z, g, dtype)
            for (W, prep, steps), Z, g in zip(jobs, Zt, gamma_live, strict=True)]


def _pass_results(W, prep, steps, Zt, gamma_live, dtype) -> list[PassResult]:
    a, n = W.shape
    inv_diag = 1.0 / torch.diagonal(prep.L)
    # one transposing conversion for all steps; each step's codes are then a row block, copied
    # so that a kept result does not hold the whole pass's buffer
    Z = Zt.T.to(torch.int64, memory_format=torch.contiguous_format)
    everything_live = prep.live.numel() == n
    out = []
    for b, c in enumerate(steps):
        codes = Z[b * a:(b + 1) * a].clone()
        if not everything_live:
            codes = torch.zeros((a, n), dtype=torch.int64, device=W.device).index_copy_(
                1, prep.live, codes)
        alpha = torch.zeros(n, dtype=torch.float64, device=W.device)
        alpha[prep.live] = c * inv_diag
        gamma = torch.zeros(n, dtype=torch.float64, device=W.device)
        gamma[prep.live] = gamma_live[:, b].to(torch.float64)
        out.append(PassResult(codes=codes, alpha=alpha, gamma=gamma, c=c, dtype=dtype))
    return out


def watersic_pass(W: torch.Tensor, prep: WaterSICPrepared, c: float, *, ls_gain: bool = True,
                  dtype: torch.dtype | None = None, block_size: int = 128,
                  cancel: CancelFn | None = None) -> PassResult:
    """Quantize W with WaterSIC at a fixed whitened step ``c`` (no rate search, no rescalers).

    Parameters
    ----------
    W : torch.Tensor, shape (a, n)
        Weights in the basis of ``prep``.
    prep : WaterSICPrepared
        From :func:`prepare_watersic` on the Σ of the same basis.
    c : float
        Whitened step; column ``j`` is rounded with weight-domain step ``c / L_jj``.
    ls_gain : bool
        Use the per-column least-squares gain inside the feedback.
    dtype : torch.dtype, optional
        Precision of the pass; default float32 unless the noise bound asks for float64.
    block_size : int
        Columns per lazy-update block.
    cancel : callable, optional
        Polled once per block; returning True raises :class:`Cancelled`.

    Returns
    -------
    PassResult

    Examples
    --------
    >>> prep = prepare_watersic(torch.eye(2, dtype=torch.float64), WaterSICConfig(damping=0))
    >>> watersic_pass(torch.tensor([[0.26, -1.4]]), prep, 0.5, ls_gain=False).codes.tolist()
    [[1, -3]]
    """
    return watersic_passes(W, prep, [c], ls_gain=ls_gain, dtype=dtype, block_size=block_size,
                           cancel=cancel)[0]


@dataclass
class RescalerFit:
    """Diagonal rescalers ``Ŵ = diag(t) Ŵ0 diag(g)`` fitted by alternating least squares.

    Attributes
    ----------
    t : torch.Tensor, float64, shape (a,)
        Row rescaler ``T``, normalized to ``mean|t| = 1``.
    g : torch.Tensor, float64, shape (m,)
        Column rescaler ``Γ`` (replaces the SIC gains).
    loss_before, loss_after : float
        ``tr((W−Ŵ)S(W−Ŵ)ᵀ)`` per entry with the starting and the fitted rescalers.
    iterations : int
        Alternating iterations run.
    """

    t: torch.Tensor
    g: torch.Tensor
    loss_before: float
    loss_after: float
    iterations: int


class _RescalerProblem:
    """``J(t, g) = tr(WSWᵀ) − 2⟨B, Ŵ⟩ + tr(ŴSŴᵀ)``, ``B = WS``, ``Ŵ = diag(t) Ŵ0 diag(g)``."""

    def __init__(self, W, W0, S):
        self.W0, self.S = W0, S
        self.B = W @ S
        self.WSW = float((self.B * W).sum())
        self.size = W0.numel()

    def gamma_system(self, t):
        W0t = self.W0 * t[:, None]
        F3 = self.S * _gram(W0t)
        f4 = (W0t * self.B).sum(0)
        return F3, f4

    def row_system(self, g):
        M = self.W0 * g
        return (self.B * M).sum(1), ((M @ self.S) * M).sum(1)

    def loss(self, linear, quad, x):
        return (self.WSW - 2 * float(linear @ x) + quad) / self.size


def _gram(X: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``XᵀX`` from its upper block triangle (the lower one is its transpose): a little over
    half the flops of one product, 25 % faster at a = n = 2048."""
    n = X.shape[1]
    G = X.new_empty((n, n))
    for i in range(0, n, block):
        rows = X[:, i:i + block].T @ X[:, i:]
        G[i:i + block, i:] = rows
        G[i + block:, i:i + block] = rows[:, block:].T
    return G


def _ridge(diag_values: torch.Tensor) -> float:
    return max(1e-11, 1e-8 * float(diag_values.mean()))


def _solve_spd(F3, f4):
    eye = torch.eye(F3.shape[0], dtype=F3.dtype, device=F3.device)
    chol, info = torch.linalg.cholesky_ex(F3 + _ridge(torch.diagonal(F3)) * eye)
    if int(info) == 0:
        return torch.cholesky_solve(f4[:, None], chol)[:, 0]
    return torch.linalg.pinv(F3) @ f4


def _gamma_step(F3, f4, prob, g, loss):
    """Exact Γ update for fixed t, with the authors' backtracking; None when nothing helps."""
    g_new = _solve_spd(F3, f4)
    for frac in (1.0, *_LINE_SEARCH_FRACTIONS):
        trial = g + frac * (g_new - g)
        trial_loss = prob.loss(f4, float(trial @ F3 @ trial), trial)
        if trial_loss <= loss:
            return trial
    return None


def _row_step(prob, g):
    f7, f8 = prob.row_system(g)
    t = f7 / (f8 + _ridge(f8))
    return t, prob.loss(f7, float((f8 * t * t).sum()), t)


def fit_rescalers(W: torch.Tensor, W0: torch.Tensor, S: torch.Tensor, g0: torch.Tensor, *,
                  max_iter: int = 100, tol: float = 3e-4,
                  cancel: CancelFn | None = None) -> RescalerFit:
    """Fit ``Ŵ = diag(t) Ŵ0 diag(g)`` to W under ``tr((W−Ŵ)S(W−Ŵ)ᵀ)`` by alternating LS.

    Each iteration solves ``(S ∘ F2 + ρI) g = f4`` exactly with ``F2 = Ŵ0ᵀ diag(t²) Ŵ0`` and
    ``f4_j = Σ_r t_r Ŵ0_rj B_rj`` (``B = WS``; backtracking by halves when the loss rises), clips
    ``g`` to ``[−0.1, 1.5]``, sets every ``t_r`` in closed form and renormalizes
    ``mean|t| = 1``. It stops at a relative loss change below ``tol`` or after ``max_iter``
    iterations; an iteration that raises the loss is undone, and the result is never worse than
    the start ``(t = 1, g = g0)``. Everything runs in float64.

    Parameters
    ----------
    W : torch.Tensor, shape (a, m)
        Target weights.
    W0 : torch.Tensor, shape (a, m)
        Un-gained reconstruction ``Z diag(α)``.
    S : torch.Tensor, shape (m, m)
        The (undamped) Σ of the loss.
    g0 : torch.Tensor, shape (m,)
        Starting column gains (the SIC gains).
    max_iter : int
        Most alternating iterations.
    tol : float
        Relative loss change that counts as converged.
    cancel : callable, optional
        Polled every iteration; returning True raises :class:`Cancelled`.

    Returns
    -------
    RescalerFit

    Examples
    --------
    >>> W = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    >>> fit = fit_rescalers(W, 0.5 * W, torch.eye(2, dtype=torch.float64), torch.ones(2))
    >>> round(fit.loss_before, 3), fit.loss_after < 1e-6
    (1.875, True)
    """
    W, W0, S = (x.to(torch.float64) for x in (W, W0, S))
    prob = _RescalerProblem(W, W0, S)
    t = torch.ones(W.shape[0], dtype=torch.float64, device=W.device)
    g = g0.to(device=W.device, dtype=torch.float64).clone()
    start = loss = None
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        if cancel is not None and cancel():
            raise Cancelled("WaterSIC rescaler fit was cancelled.")
        F3, f4 = prob.gamma_system(t)
        if start is None:  # the first Γ system is at t = 1, so it prices the start for free
            start = loss = prob.loss(f4, float(g @ F3 @ g), g)
        g_new = _gamma_step(F3, f4, prob, g, loss)
        if g_new is None:
            break
        g_new = g_new.clamp(*_GAMMA_CLIP)
        t_new, new_loss = _row_step(prob, g_new)
        scale = float(t_new.abs().mean())
        if new_loss > loss or not scale > 0:
            break
        t, g = t_new / scale, g_new * scale
        change, loss = (loss - new_loss) / max(loss, 1e-300), new_loss
        if change < tol:
            break
    if start is None:
        f7, f8 = prob.row_system(g)
        start = loss = prob.loss(f7, float(f8.sum()), t)
    if loss > start:
        t = torch.ones_like(t)
        g, loss = g0.to(device=W.device, dtype=torch.float64).clone(), start
    return RescalerFit(t=t, g=g, loss_before=start, loss_after=loss, iterations=iterations)


def _side_info_bits(a: int, prep: WaterSICPrepared, rescalers: bool) -> float:
    per_row = a if rescalers else 0
    return SIDE_INFO_BITS * (per_row + prep.live.numel() + prep.dead.numel())


def _start_log2_steps(W_live: torch.Tensor, prep: WaterSICPrepared, entropies,
                      rate_metric: str) -> list[float]:
    """First guess of ``log2 c`` for each target entropy per live column.

    Model: column i's residual target is Gaussian with ``σ_i = √(s_i)·L_ii`` (the high-rate
    picture), rounded with step ``c``, read as :func:`~wfviz.rates.log2_step_for_entropy`
    models it (the plug-in shortfall of ``a`` codes for ``column_entropy``, one histogram for
    ``pooled_entropy``). It lands within a few hundredths of a bit at low rate, where the plain
    high-resolution formula ``log2 c = mean_i ½ log2(2πe s_i L_ii²) − h`` was off by half a
    bit, so a stacked search of six rates usually ends in two rounds.
    """
    s = (W_live.to(torch.float64) ** 2).mean(0)
    if not bool((s > 0).any()):
        raise WfvizError("W is zero in every live column; there is nothing to quantize.")
    log2_sigma = 0.5 * np.log2(np.maximum((s * torch.diagonal(prep.L) ** 2).cpu().numpy(),
                                          1e-300))
    rows = W_live.shape[0] if rate_metric == "column_entropy" else None
    return log2_step_for_entropy(log2_sigma, entropies, rows,
                                 pooled=rate_metric == "pooled_entropy")


def _fp16_grid(x: torch.Tensor) -> torch.Tensor:
    """Round to fp16 after dividing by a power of two near ``max|x|`` (kept exactly)."""
    top = float(x.abs().max())
    if top == 0:
        return x
    ref = 2.0 ** math.floor(math.log2(top))
    return (x / ref).to(torch.float16).to(x.dtype) * ref


def _check_inputs(W, sigma, rate_metric):
    if not isinstance(W, torch.Tensor) or W.ndim != 2 or 0 in W.shape:
        raise WfvizError("W must be a non-empty 2-D torch.Tensor of shape (a, n).")
    if not W.is_floating_point():
        raise WfvizError(f"W must hold floating-point weights, got {W.dtype}; convert it first.")
    if sigma.shape != (W.shape[1], W.shape[1]):
        raise WfvizError(f"Σ must be {W.shape[1]}×{W.shape[1]} to match W's {W.shape[1]} columns, "
                         f"got {tuple(sigma.shape)}.")
    if not all_finite(W):
        raise WfvizError("W contains NaN or infinite entries; fix the weights first.")
    if rate_metric not in RATE_METRICS or rate_metric == "log_cardinality":
        raise WfvizError(f"WaterSIC's codes are unbounded, so its rate must be an entropy or coded "
                         f"size; use column_entropy, pooled_entropy or coded_bits, not "
                         f"{rate_metric!r}.")


def _check_measurable(entropy: float, a: int, n: int, m: int, rate_metric: str) -> None:
    """An empirical entropy of N samples is at most log2 N: refuse targets above that."""
    samples = a if rate_metric == "column_entropy" else a * m
    if entropy >= math.log2(samples) * m / n:
        raise WfvizError(f"{entropy:.2f} bits of {rate_metric} cannot be measured on {samples} "
                         f"codes per histogram (at most log2({samples}) bits); ask for fewer bits "
                         f"or use more rows.")


def _check_rate(W, prep, rate, side_bits, rate_metric) -> None:
    a, n = W.shape
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise WfvizError(f"The target rate must be a positive number of bits, got {rate!r}.")
    if rate <= side_bits / (a * n):
        raise WfvizError(f"A rate of {rate} bits is below WaterSIC's side information of "
                         f"{side_bits / (a * n):.4f} bits per weight; ask for more bits.")
    _check_measurable(rate - side_bits / (a * n), a, n, prep.live.numel(), rate_metric)


@dataclass
class _Job:
    """One (W, Σ) of a batched WaterSIC search."""

    W: torch.Tensor
    prep: WaterSICPrepared
    side_bits: float
    search: RateCurveSearch
    passes_run: int = 0

    @property
    def W_live(self) -> torch.Tensor:
        return self.W[:, self.prep.live]


def _job(W, sigma, prep, rates, config, rate_metric) -> _Job:
    sigma = _check_sigma(sigma, values=prep is None)
    _check_inputs(W, sigma, rate_metric)
    prep = prep if prep is not None else prepare_watersic(sigma, config)
    if prep.n != W.shape[1]:
        raise WfvizError("The prepared WaterSIC factor is for another Σ; prepare it again.")
    a, n = W.shape
    side_bits = _side_info_bits(a, prep, config.rescalers)
    for r in rates:
        _check_rate(W, prep, r, side_bits, rate_metric)
    rates = [float(r) for r in rates]
    entropies = [(r - side_bits / (a * n)) * n / prep.live.numel() for r in rates]
    search = RateCurveSearch(rates, config.rate_tol, 0.0,
                             starts=_start_log2_steps(W[:, prep.live], prep, entropies,
                                                     rate_metric))
    return _Job(W, prep, side_bits, search)


def _search_round(jobs, config, rate_metric, factors, cancel) -> int:
    """One stacked pass per group of unfinished jobs that can share a loop; steps left."""
    todo = {i: j.search.pending() for i, j in enumerate(jobs)}
    groups: dict = {}
    for i in (i for i, t in todo.items() if t):
        key = (jobs[i].W.shape[0], jobs[i].prep.live.numel(), jobs[i].W.device)
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        width = max(len(todo[i]) for i in members)
        steps = {i: [2.0**u for u in padded(todo[i], width)] for i in members}
        dtype = widest_dtype(_pass_dtype(jobs[i].W_live, jobs[i].prep, min(steps[i]),
                                         config.precision, config.fp32_noise_limit)
                             for i in members)
        key = (tuple(members), dtype)
        if key not in factors:  # the group's factors, stacked and converted once
            if len(groups) == 1:
                factors.clear()  # a smaller group of unfinished jobs replaces the last stack
            factors[key] = stack_converted([jobs[i].prep.L for i in members], dtype,
                                           jobs[members[0]].prep.L.device)
        L = factors[key]
        results = _stacked_passes([(jobs[i].W, jobs[i].prep, steps[i]) for i in members], L,
                                  config.ls_gain, dtype, config.block_size, cancel)
        for i, passes in zip(members, results, strict=True):
            jobs[i].passes_run += 1
            for u, res in zip(todo[i], passes, strict=False):  # the padding is not measured
                measured, column_rates = measure_rate(res.codes, rate_metric,
                                                      side_info_bits=jobs[i].side_bits)
                jobs[i].search.add(u, measured, (res, column_rates))
    return sum(len(t) for t in todo.values())


def _search_steps(jobs, config, rate_metric, progress, cancel) -> None:
    """Stacked SIC passes until every measured rate is within ``rate_tol`` of its target."""
    factors: dict = {}
    for k in range(config.max_search_passes):
        ran = _search_round(jobs, config, rate_metric, factors, cancel)
        if not ran:
            break
        if progress is not None:
            left = sum(not j.search.done(i) for j in jobs for i in range(len(j.search.targets)))
            progress(0.8 * (1 - 0.5 ** (k + 1)),  # a typical search needs 2-4 rounds
                     f"WaterSIC search round {k + 1}: {ran} step(s) in one loop, "
                     f"{left} rate(s) still searching ({rate_metric})")


def _finish(W, prep, config, search, passes_run, i, rate_metric, side_bits,
            cancel) -> MethodOutput:
    """The output for target ``i``: its best pass, with rescalers and fp16 scales applied."""
    a, n = W.shape
    _, _, measured, (res, column_rates) = search.best[i]
    rate = search.targets[i]
    t = torch.ones(a, dtype=torch.float64, device=W.device)
    gamma = res.gamma
    info = {"c": res.c, "damping_abs": prep.damping_abs, "damping_used": prep.damping_used,
            "dead_columns": prep.dead.tolist(),
            "precision": str(res.dtype).removeprefix("torch."),
            "search": [(2.0**u, r) for u, r in search.points],
            "search_passes": passes_run, "search_points": len(search.points),
            "rate_error": float(measured) - rate,
            "ls_gain": config.ls_gain, "rescalers": config.rescalers}
    if config.rescalers:
        live = prep.live
        W0 = res.codes[:, live].to(torch.float64) * res.alpha[live]
        fit = fit_rescalers(W[:, live], W0, prep.sigma_live, res.gamma[live],
                            max_iter=config.rescaler_max_iter, tol=config.rescaler_tol,
                            cancel=cancel)
        t, gamma = fit.t, torch.zeros_like(res.gamma)
        gamma[live] = fit.g
        info.update(loss_before_rescalers=fit.loss_before * live.numel() / n,
                    loss_after_rescalers=fit.loss_after * live.numel() / n,
                    rescaler_iterations=fit.iterations)
    column_scale = res.alpha * gamma
    if config.fp16_scales:
        column_scale, t = _fp16_grid(column_scale), _fp16_grid(t)
    W_hat = (t[:, None] * res.codes.to(torch.float64) * column_scale).to(W.dtype)
    scales = {"alpha": res.alpha, "gamma": gamma, "column_scale": column_scale, "row_scale": t}
    return MethodOutput(W_hat=W_hat, codes=res.codes, scales=scales, rate=float(measured),
                        rate_metric=rate_metric, column_rates=np.asarray(column_rates),
                        side_info_bits=side_bits, info=info)


def quantize_watersic_rates(W: torch.Tensor, sigma: torch.Tensor, rates,
                            config: WaterSICConfig = WaterSICConfig(), *,
                            rate_metric: str = "column_entropy",
                            progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                            prepared: WaterSICPrepared | None = None) -> list[MethodOutput]:
    """WaterSIC at several target rates, searched together in stacked passes.

    Parameters are those of :func:`quantize_watersic`, with ``rates`` a sequence of targets.

    Returns
    -------
    list of MethodOutput
        One per target, in the order given.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> outs = quantize_watersic_rates(torch.randn(256, 8, generator=g), torch.eye(8), [2, 3])
    >>> [round(o.rate, 1) for o in outs]
    [2.0, 3.0]
    """
    return quantize_watersic_many([(W, sigma, prepared)], rates, config,
                                  rate_metric=rate_metric, progress=progress, cancel=cancel)[0]


def quantize_watersic_many(problems, rates, config: WaterSICConfig = WaterSICConfig(), *,
                           rate_metric: str = "column_entropy",
                           progress: ProgressFn | None = None,
                           cancel: CancelFn | None = None) -> list[list[MethodOutput]]:
    """WaterSIC of several independent problems at the same targets, sharing column loops.

    Every search round runs the candidates of all unfinished problems with the same number
    of rows and live features in one SIC loop with a batch axis (padded to the same number
    of candidates; the padding is not measured). Below n ≈ 2048 the loop is bound by
    per-operation overhead, so the three rotations of a sweep cost little more than one.

    Parameters
    ----------
    problems : sequence of (W, sigma, prepared)
        Weights and Σ_X, each in its own basis, with :func:`prepare_watersic` of that Σ (and
        ``config``) or None.
    rates, config, rate_metric, progress, cancel
        As in :func:`quantize_watersic_rates`.

    Returns
    -------
    list of list of MethodOutput
        ``[problem][target]``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> W = torch.randn(256, 8, generator=g)
    >>> outs = quantize_watersic_many([(W, torch.eye(8), None), (W, torch.eye(8) * 4, None)], [3])
    >>> [round(o[0].rate, 1) for o in outs]
    [3.0, 3.0]
    """
    rates = list(rates)
    if not rates:
        raise WfvizError("Give at least one target rate.")
    jobs = [_job(W, S, prep, rates, config, rate_metric) for W, S, prep in problems]
    _search_steps(jobs, config, rate_metric, progress, cancel)
    outs = [[_finish(j.W, j.prep, config, j.search, j.passes_run, i, rate_metric, j.side_bits,
                     cancel) for i in range(len(rates))] for j in jobs]
    if progress is not None:
        done = ", ".join(f"{o.rate:.4f}" for row in outs for o in row)
        progress(1.0, f"WaterSIC done: {done} bits ({rate_metric})")
    return outs


def quantize_watersic(W: torch.Tensor, sigma: torch.Tensor, rate: float,
                      config: WaterSICConfig = WaterSICConfig(), *,
                      rate_metric: str = "column_entropy", progress: ProgressFn | None = None,
                      cancel: CancelFn | None = None,
                      prepared: WaterSICPrepared | None = None) -> MethodOutput:
    """Quantize W with WaterSIC at a target measured rate.

    The whitened step ``c`` is searched (see the module docstring) until the rate of the codes
    under ``rate_metric``, side information included, is within ``config.rate_tol`` bits of
    ``rate``; then the rescalers are fitted if ``config.rescalers``.

    Parameters
    ----------
    W : torch.Tensor, shape (a, n)
        Weights, in the basis of ``sigma``.
    sigma : torch.Tensor, shape (n, n)
        Σ_X, uncentred second moment of the layer input.
    rate : float
        Target bits per weight under ``rate_metric``, side information included.
    config : WaterSICConfig
        Method knobs.
    rate_metric : str
        ``"column_entropy"``, ``"pooled_entropy"`` or ``"coded_bits"``.
    progress : callable, optional
        ``progress(fraction, message)``.
    cancel : callable, optional
        Returning True stops the work with :class:`Cancelled` (polled once per block of columns).
    prepared : WaterSICPrepared, optional
        Output of :func:`prepare_watersic` for this ``sigma`` and ``config``, to reuse it.

    Returns
    -------
    MethodOutput
        ``scales`` holds ``alpha`` (α_j = c/L_jj), ``gamma`` (SIC gains or Γ), ``column_scale``
        (α∘Γ, the stored one) and ``row_scale`` (T); ``info`` holds the step ``c``, the
        search log ``search`` as ``(c, measured rate)`` pairs, ``search_passes`` (stacked SIC
        passes run) and ``search_points`` (steps evaluated in them), the pass
        ``precision``, ``dead_columns``, ``damping_abs`` and, with rescalers, the loss per
        entry before and after them.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> W, S = torch.randn(64, 16, generator=g), torch.eye(16)
    >>> out = quantize_watersic(W, S, 4.0, WaterSICConfig(rate_tol=0.05))
    >>> abs(out.rate - 4.0) <= 0.05
    True
    """
    return quantize_watersic_rates(W, sigma, [rate], config, rate_metric=rate_metric,
                                   progress=progress, cancel=cancel, prepared=prepared)[0]
