"""WaterSIC: one lattice step in the whitened domain, successive interference cancellation.

With ``Σ = L Lᵀ`` (``L`` lower, from the damped Σ) the loss ``tr((W−Ŵ)Σ(W−Ŵ)ᵀ)`` equals
``‖(W−Ŵ)L‖²`` and column ``j`` of ``(W−Ŵ)L`` only involves columns ``j..n−1`` of ``W − Ŵ``.
Deciding the columns from the last to the first and feeding every decided column's error forward
makes the error of each whitened column exactly its own rounding error. WaterSIC rounds every
whitened column with the same step ``c`` (weight-domain step ``α_j = c / L_jj``), which is
waterfilling on the Cholesky diagonal ``d_j = L_jj²`` and sits ``½ log2(2πe/12) ≈ 0.2546`` bit
above the information-theoretic limit at high rate, in every basis.

The family has three modules: this one (config, Σ-only preparation, the rate search and the
entry points), :mod:`~wfviz.quantizers.watersic_sic` (the column loop at fixed steps) and
:mod:`~wfviz.quantizers.watersic_rescalers` (the optional row/column rescalers). The step ``c``
is searched on ``log2 c`` by the driver shared with GPTQ-EC
(:func:`~wfviz.quantizers.search.search_rates`), from first guesses that model every live
column as a Gaussian of scale ``√(mean W_j²)·L_jj`` rounded with step ``c``.

Precision: a pass runs in float32 unless the a-priori float32 noise bound
(:func:`~wfviz.quantizers.base.loop_dtype`, with ``max|L_jj W_j|/c`` and the feedback gain
``max_j ‖(L_kj / L_kk)_{k>j}‖``) exceeds ``fp32_noise_limit``; the search decides it at every
round for the round's smallest step. The Cholesky factorization and the rescalers are always
float64. Measurements of both choices are in ``benchmarks/NOTES.md``.

Side information (bits charged for the whole matrix, 16 bits for every stored number):
16 per live column (the merged column scale ``α_j Γ_j``, or ``α_j γ_j`` without rescalers),
16 per row when the rescalers are on (``T``), and 16 per dead column index. By default the
reconstruction uses those scales rounded to fp16 (column scales relative to one shared
power-of-two exponent, which is not charged); the error feedback inside the SIC uses the exact
values. The rounding adds a relative weight error of about ``2⁻¹¹/√3`` rms, which is below
0.001 bit up to about 7 bits per weight (``fp16_scales=False`` removes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import WfvizError
from ..validation import DEAD_THRESHOLD, check_sigma, check_weights, dead_mask
from .base import (
    SIDE_INFO_BITS,
    CancelFn,
    MethodOutput,
    ProgressFn,
    check_damping,
    check_precision,
    check_search,
    damped_cholesky,
)
from .search import (
    RateCurveSearch,
    SearchKernel,
    SearchProblem,
    best_of,
    check_target_rate,
    search_rates,
    start_log2_steps,
)
from .watersic_rescalers import RescalerFit, fit_rescalers
from .watersic_sic import PassResult, live_ymax, stacked_passes, watersic_pass, watersic_passes

__all__ = ["PassResult", "RescalerFit", "SIDE_INFO_BITS", "WaterSICConfig", "WaterSICPrepared",
           "fit_rescalers", "prepare_watersic", "quantize_watersic", "quantize_watersic_many",
           "quantize_watersic_rates", "sic_round", "watersic_pass", "watersic_passes"]


@dataclass(frozen=True)
class WaterSICConfig:
    """Knobs of WaterSIC.

    Attributes
    ----------
    damping : float
        Relative damping: ``damping · mean(diag Σ)`` is added to the diagonal before the Cholesky.
    dead_threshold : float
        Dead-feature threshold (:func:`wfviz.validation.dead_mask`).
    ls_gain : bool
        Per-column least-squares gain ``γ_j = ⟨z, y⟩ / (c ‖z‖²)`` inside the error feedback.
    rescalers : bool
        Fit diagonal row/column rescalers ``T``, ``Γ`` after the SIC (:func:`fit_rescalers`).
        Off by default: they cost 16 bits per row and paid for them only at about 2 bits or
        below on weights with unequal row norms (``benchmarks/NOTES.md``).
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
        Most stacked SIC passes of the step search (one candidate step per target still
        searching in each).
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
    dead_threshold: float = DEAD_THRESHOLD
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
        check_damping(self.damping, self.dead_threshold)
        check_precision(self.precision)
        if int(self.block_size) < 1:
            raise WfvizError(f"block_size must be a positive integer, got {self.block_size}.")
        check_search(self.rate_tol, self.max_search_passes)
        if not self.rescaler_tol > 0 or self.rescaler_max_iter < 0:
            raise WfvizError("rescaler_tol must be > 0 and rescaler_max_iter >= 0; use e.g. 3e-4 "
                             "and 100.")


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
    s = check_sigma(sigma)
    dead = dead_mask(torch.diagonal(s), config.dead_threshold)
    live = torch.nonzero(~dead).flatten()
    if live.numel() == 0:
        raise WfvizError("Every feature of Σ has zero variance; there is nothing to quantize.")
    # No copy of Σ unless features are dead: at n = 14336 every n×n float64 array is 1.6 GB.
    s_live = s if live.numel() == s.shape[0] else s.index_select(0, live).index_select(1, live)
    damped = s_live.clone()
    L, damping_used, damp = damped_cholesky(damped, config.damping)
    del damped
    return WaterSICPrepared(
        n=s.shape[0], live=live, dead=torch.nonzero(dead).flatten(), L=L,
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


def _side_info_bits(a: int, prep: WaterSICPrepared, rescalers: bool) -> float:
    per_row = a if rescalers else 0
    return SIDE_INFO_BITS * (per_row + prep.live.numel() + prep.dead.numel())


def _fp16_grid(x: torch.Tensor) -> torch.Tensor:
    """Round to fp16 after dividing by a power of two near ``max|x|`` (kept exactly)."""
    top = float(x.abs().max())
    if top == 0:
        return x
    ref = 2.0 ** math.floor(math.log2(top))
    return (x / ref).to(torch.float16).to(x.dtype) * ref


def _problem(W, sigma, prep, rates, config, rate_metric) -> SearchProblem:
    check_weights(W)
    a, n = W.shape
    sigma = check_sigma(sigma, n, values=prep is None)
    prep = prep if prep is not None else prepare_watersic(sigma, config)
    if prep.n != n:
        raise WfvizError("The prepared WaterSIC factor is for another Σ; prepare it again.")
    side_bits = _side_info_bits(a, prep, config.rescalers)
    m = prep.live.numel()
    rates = [check_target_rate(r, a=a, n=n, m=m, side_bits=side_bits, rate_metric=rate_metric,
                               method="WaterSIC") for r in rates]
    W_live = W[:, prep.live]
    s = (W_live.to(torch.float64) ** 2).mean(0)
    if not bool((s > 0).any()):
        raise WfvizError("W is zero in every live column; there is nothing to quantize.")
    log2_sigma = 0.5 * np.log2(np.maximum((s * torch.diagonal(prep.L) ** 2).cpu().numpy(),
                                          1e-300))
    payloads = [(r - side_bits / (a * n)) * n / m for r in rates]
    starts = start_log2_steps(log2_sigma, payloads, a, rate_metric)
    return SearchProblem(W=W, prep=prep, factor=prep.L, side_bits=side_bits,
                         ymax=live_ymax(W, prep), gain=lambda: prep.feedback_gain,
                         search=RateCurveSearch(rates, config.rate_tol, 0.0, starts=starts))


def _kernel(config: WaterSICConfig) -> SearchKernel:
    def run(problems, steps, L, dtype, cancel):
        return stacked_passes([(p.W, p.prep, s) for p, s in zip(problems, steps, strict=True)],
                              L, config.ls_gain, dtype, config.block_size, cancel)

    return SearchKernel("WaterSIC", lambda u: 2.0**u, run)


def _finish(p: SearchProblem, i: int, config, rate_metric, cancel) -> MethodOutput:
    """The output for target ``i``: its best pass, with rescalers and fp16 scales applied."""
    W, prep, search, side_bits = p.W, p.prep, p.search, p.side_bits
    a, n = W.shape
    _, res, measured, column_rates = best_of(p, i, rate_metric)
    rate = search.targets[i]
    t = torch.ones(a, dtype=torch.float64, device=W.device)
    gamma = res.gamma
    info = {"c": res.c, "damping_abs": prep.damping_abs, "damping_used": prep.damping_used,
            "dead_columns": prep.dead.tolist(),
            "precision": str(res.dtype).removeprefix("torch."),
            "search": [(2.0**u, r) for u, r in search.points],
            "search_passes": p.passes_run, "search_points": len(search.points),
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
    return MethodOutput(W_hat=W_hat, codes=res.codes, scales=scales, rate=measured,
                        rate_metric=rate_metric, column_rates=column_rates,
                        side_info_bits=side_bits, info=info)


def sic_round(W, sigma, c: float, *, feedback: bool = True):
    """Round every column of ``W`` on WaterSIC's grid ``c / L_jj``, with or without SIC.

    The bare mechanism, for teaching: no damping, no gains, no rate search. With ``feedback``
    the columns are decided last to first and each rounding target includes the errors of the
    columns already decided (:func:`watersic_pass`), so every column of the output-domain error
    ``(W − Ŵ) L`` is exactly its own rounding error, at most ``c/2``; without, each column is
    rounded on its own and the earlier errors leak into the later outputs.

    Parameters
    ----------
    W : array_like, shape (a, n)
    sigma : array_like, shape (n, n)
        Positive definite Σ_X (``Σ = L Lᵀ``).
    c : float
        The whitened step.
    feedback : bool

    Returns
    -------
    codes : ndarray of int, shape (a, n)
    output_error : ndarray, shape (a, n)
        ``(W − Ŵ) L``.

    Examples
    --------
    >>> S = np.array([[1.0, 0.9], [0.9, 1.0]])
    >>> W = np.random.default_rng(0).standard_normal((256, 2))
    >>> _, err = sic_round(W, S, 0.5)
    >>> bool(np.abs(err).max() <= 0.25 + 1e-12)
    True
    """
    W = torch.as_tensor(np.asarray(W, dtype=np.float64))
    S = torch.as_tensor(np.asarray(sigma, dtype=np.float64))
    prep = prepare_watersic(S, WaterSICConfig(damping=0.0, dead_threshold=0.0))
    L = prep.L
    if feedback:
        res = watersic_pass(W, prep, float(c), ls_gain=False, dtype=torch.float64)
        codes, W_hat = res.codes, res.W_hat
    else:
        diag = torch.diagonal(L)
        codes = torch.round(W * diag / c).to(torch.int64)
        W_hat = codes.to(torch.float64) * (c / diag)
    return codes.numpy(), ((W - W_hat) @ L).numpy()


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
    of rows and live features in one SIC loop with a batch axis
    (:func:`~wfviz.quantizers.search.search_rates`). Below n ≈ 2048 the loop is bound by
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
    probs = [_problem(W, S, prep, rates, config, rate_metric) for W, S, prep in problems]
    search_rates(probs, _kernel(config), max_passes=config.max_search_passes,
                 precision=config.precision, noise_limit=config.fp32_noise_limit,
                 rate_metric=rate_metric, progress=progress, cancel=cancel)
    outs = [[_finish(p, i, config, rate_metric, cancel) for i in range(len(rates))]
            for p in probs]
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
