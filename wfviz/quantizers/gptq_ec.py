"""Entropy-coded GPTQ: the equal-rate SIC variant that the high-rate theory analyses.

Every column is rounded with one uniform step ``Δ`` in the weight domain, with no clipping
(codes ``round(w/Δ)`` are unbounded integers), and the error is fed forward exactly as in GPTQ
(same damped factor, same lazy blocks; see :mod:`wfviz.quantizers.gptq`). The codes are meant to
be entropy coded, so the rate is measured on them (default: per-column empirical entropy) plus
16 bits for the one fp16 step. At high rate its distortion is ``(2πe/12)·σ²·AM(d)·2^{−2R}``,
``½ log2(AM(d)/GM(d))`` bits above WaterSIC.

The step is searched on ``log2 Δ``: the measured rate falls monotonically (up to sampling
noise) as ``Δ`` grows, with slope ≈ −1 bit per doubling at high rate. Several target rates
are searched together (:func:`quantize_gptq_ec_rates`): each round runs one candidate step per
unfinished target *in one SIC pass*, by stacking copies of ``W`` with different per-row steps
(rows are independent in the SIC), which amortizes the per-column loop overhead, and every
evaluated point refines the same rate curve for all targets
(:class:`~wfviz.quantizers.search.RateCurveSearch`). The accepted codes are those of the best
evaluated point, so no extra pass runs for the answer.

Precision: ``"auto"`` runs the column loop in float32 unless an a-priori bound on float32
rounding noise in the residual targets, ``2⁻²⁴·√n·(max|W|/Δ + max_j ‖F_<j,j‖)`` in units of
the step (``F`` is the feedback matrix of :class:`~wfviz.quantizers.gptq.GPTQPrepared`),
exceeds ``fp32_noise_limit`` (high rate or an ill-conditioned Σ); then float64.
The Cholesky factors are always float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..errors import WfvizError
from ..rates import log2_step_for_entropy
from .base import CancelFn, MethodOutput, ProgressFn, stack_converted, widest_dtype
from .gptq import (
    SCALE_BITS,
    GPTQPrepared,
    check_sigma,
    check_weights,
    measure_codes,
    prepare_gptq,
    sic_pass_transposed,
    unpermute_columns,
)
from .search import RateCurveSearch, padded

_FP32_UNIT_ROUNDOFF = 2.0**-24


@dataclass(frozen=True)
class GPTQECConfig:
    """Knobs of entropy-coded GPTQ.

    Attributes
    ----------
    percdamp : float
        Relative damping of ``H = 2Σ``. The default 1e-4 is WaterSIC's, not GPTQ's 0.01, so
        that the two SIC methods run on the same damped Σ and the measured gap is the
        ``½ log2(AM(d)/GM(d))`` of the theory (a damping of 0.01 distorts ``d`` of the small
        eigen-directions and adds its own loss).
    act_order : bool
        Decide the columns in order of descending ``diag Σ``.
    block_size : int
        Columns per lazy-update block.
    precision : str
        ``"auto"``, ``"float32"`` or ``"float64"`` for the column loop.
    fp32_noise_limit : float
        Largest float32 noise bound (in steps) that ``"auto"`` accepts.
    rate_tol : float
        Stop when the measured rate is within this many bits of the target.
    max_search_rounds : int
        Most stacked SIC passes of the step search.

    Examples
    --------
    >>> GPTQECConfig().rate_tol
    0.01
    """

    percdamp: float = 1e-4
    act_order: bool = False
    block_size: int = 128
    precision: str = "auto"
    fp32_noise_limit: float = 3e-3
    rate_tol: float = 0.01
    max_search_rounds: int = 12

    def __post_init__(self):
        if not (math.isfinite(self.percdamp) and self.percdamp >= 0):
            raise WfvizError(f"percdamp must be a number >= 0 (e.g. 0.01), got {self.percdamp}.")
        if int(self.block_size) != self.block_size or self.block_size < 1:
            raise WfvizError(f"block_size must be a positive integer, got {self.block_size}.")
        if self.precision not in ("auto", "float32", "float64"):
            raise WfvizError(f"precision must be 'auto', 'float32' or 'float64', got "
                             f"{self.precision!r}.")
        if not self.rate_tol > 0 or self.max_search_rounds < 2:
            raise WfvizError("rate_tol must be > 0 and max_search_rounds >= 2.")


def prepare_gptq_ec(sigma: torch.Tensor, config: GPTQECConfig = GPTQECConfig()) -> GPTQPrepared:
    """The Σ-only part (damped feedback factor, order, dead columns), shared by every rate.

    Examples
    --------
    >>> prepare_gptq_ec(torch.eye(4)).n
    4
    """
    return prepare_gptq(sigma, config.percdamp, config.act_order)


def _loop_dtype(W: torch.Tensor, prep: GPTQPrepared, step: float, config: GPTQECConfig):
    if config.precision != "auto":
        return getattr(torch, config.precision)
    bound = _FP32_UNIT_ROUNDOFF * math.sqrt(prep.n) * (float(W.abs().max()) / step
                                                       + prep.feedback)
    return torch.float32 if bound <= config.fp32_noise_limit else torch.float64


def _stored_step(u: float) -> float:
    """``2^u`` rounded to fp16 (the stored side information) when fp16 holds it as a normal."""
    step = 2.0**u
    half = float(torch.tensor(step, dtype=torch.float16))
    return half if 2.0**-14 <= half <= 65504.0 else step


def _start_us(Wd: torch.Tensor, entropies, rate_metric: str) -> list[float]:
    """First guesses of ``log2 Δ``: every column a Gaussian of its own mean square, rounded.

    :func:`~wfviz.rates.log2_step_for_entropy` models the low-rate bend and, for
    ``column_entropy``, the plug-in shortfall of ``a`` codes; the feedback, which adds to the
    residual's variance, is left to the search.
    """
    s = (Wd.to(torch.float64) ** 2).mean(0).cpu().numpy()
    if not (s > 0).any():
        raise WfvizError("W is zero in every column; there is nothing to quantize.")
    rows = Wd.shape[0] if rate_metric == "column_entropy" else None
    return log2_step_for_entropy(0.5 * np.log2(np.maximum(s, 1e-300)), entropies, rows,
                                 pooled=rate_metric == "pooled_entropy")


def _check_target(rate, a: int, n: int, rate_metric: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) \
            or rate <= SCALE_BITS / (a * n):
        raise WfvizError(f"The target rate must be a number of bits above the step's side "
                         f"information {SCALE_BITS / (a * n):.3g}, got {rate!r}.")
    if rate_metric == "log_cardinality":
        raise WfvizError("GPTQ-EC's codes are unbounded, so its rate must be an entropy or a "
                         "coded size; use column_entropy, pooled_entropy or coded_bits.")
    samples = a if rate_metric == "column_entropy" else a * n
    if rate >= math.log2(samples):
        raise WfvizError(f"{rate} bits of {rate_metric} cannot be measured from {samples} codes "
                         f"per histogram; ask for fewer bits or use more rows.")


def quantize_gptq_ec_rates(W: torch.Tensor, sigma: torch.Tensor, rates,
                           config: GPTQECConfig = GPTQECConfig(), *,
                           rate_metric: str = "column_entropy",
                           progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                           prepared: GPTQPrepared | None = None) -> list[MethodOutput]:
    """Entropy-coded GPTQ at several target rates, searched together in stacked passes.

    Parameters are those of :func:`quantize_gptq_ec`, with ``rates`` a sequence of targets.

    Returns
    -------
    list of MethodOutput
        One per target, in the order given.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> outs = quantize_gptq_ec_rates(torch.randn(256, 8, generator=g), torch.eye(8), [2, 3])
    >>> [round(o.rate) for o in outs]
    [2, 3]
    """
    return quantize_gptq_ec_many([(W, sigma, prepared)], rates, config, rate_metric=rate_metric,
                                 progress=progress, cancel=cancel)[0]


@dataclass
class _Problem:
    """One (W, Σ) of a batched search: its decision-order weights, factor and step search."""

    W: torch.Tensor
    Wd: torch.Tensor
    prep: GPTQPrepared
    search: RateCurveSearch

    @cached_property
    def Wd_t(self) -> torch.Tensor:
        """``Wdᵀ``, contiguous: the loop's layout, built once for every round."""
        return self.Wd.T.contiguous()


def _problem(W, sigma, prep, rates, config, rate_metric) -> _Problem:
    check_weights(W)
    a, n = W.shape
    sigma = check_sigma(sigma, n, values=prep is None)
    for r in rates:
        _check_target(r, a, n, rate_metric)
    prep = prep if prep is not None else prepare_gptq_ec(sigma, config)
    if prep.n != n:
        raise WfvizError("The prepared GPTQ factor is for another Σ; prepare it again.")
    Wd = W.masked_fill(prep.dead[None, :].to(W.device), 0.0) if prep.dead.any() else W
    if prep.perm is not None:
        Wd = Wd[:, prep.perm.to(W.device)]
    starts = _start_us(Wd, [float(r) - SCALE_BITS / (a * n) for r in rates], rate_metric)
    return _Problem(W, Wd, prep, RateCurveSearch(rates, config.rate_tol, 0.0, starts=starts))


def quantize_gptq_ec_many(problems, rates, config: GPTQECConfig = GPTQECConfig(), *,
                          rate_metric: str = "column_entropy", progress: ProgressFn | None = None,
                          cancel: CancelFn | None = None) -> list[list[MethodOutput]]:
    """Entropy-coded GPTQ of several independent problems at the same targets, in one loop.

    Each round runs every unfinished problem's candidates in one batched SIC pass
    (:func:`~wfviz.quantizers.gptq.sic_pass` with a batch axis), padded to the same number
    of candidates; the padding is not measured. Below n ≈ 2048 the column loop is bound by
    per-operation overhead, so the three rotations of a sweep cost little more than one.

    Parameters
    ----------
    problems : sequence of (W, sigma, prepared)
        Weights and Σ_X of equal shapes, each in its own basis, with
        :func:`prepare_gptq_ec` of that Σ or None.
    rates, config, rate_metric, progress, cancel
        As in :func:`quantize_gptq_ec_rates`.

    Returns
    -------
    list of list of MethodOutput
        ``[problem][target]``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> W = torch.randn(256, 8, generator=g)
    >>> outs = quantize_gptq_ec_many([(W, torch.eye(8), None), (W, 4 * torch.eye(8), None)], [3])
    >>> [abs(o[0].rate - 3) <= 0.01 for o in outs]
    [True, True]
    """
    rates = list(rates)
    if not rates:
        raise WfvizError("Give at least one target rate.")
    probs = [_problem(W, S, prep, rates, config, rate_metric) for W, S, prep in problems]
    if len({p.W.shape for p in probs}) > 1:
        raise WfvizError("The problems of one batched GPTQ-EC run must have W of one shape.")
    a = probs[0].W.shape[0] if probs else 0
    factors = {}  # dtype → the stacked F of all problems, converted once
    for k in range(config.max_search_rounds):
        todo = {i: p.search.pending() for i, p in enumerate(probs)}
        active = [i for i, t in todo.items() if t]
        if not active:
            break
        width = max(len(todo[i]) for i in active)
        steps = {i: [_stored_step(u) for u in todo[i]] for i in active}
        dtype = widest_dtype(_loop_dtype(probs[i].Wd, probs[i].prep, min(steps[i]), config)
                             for i in active)
        if dtype not in factors:
            factors[dtype] = stack_converted([p.prep.F for p in probs], dtype, probs[0].W.device)
        F = factors[dtype] if len(active) == len(probs) else factors[dtype][active]
        stacked = torch.stack([probs[i].Wd_t.to(dtype).repeat(1, width) for i in active])
        row_step = torch.tensor([padded(steps[i], width) for i in active],
                                dtype=dtype, device=stacked.device).repeat_interleave(a, dim=1)
        codes_t, _ = sic_pass_transposed(stacked, F, row_step,
                                         block_size=int(config.block_size), cancel=cancel)
        del stacked
        for c_t, i in zip(codes_t, active, strict=True):
            p = probs[i]
            # one transposing conversion per problem; each candidate is then a row block,
            # copied so that a kept result does not hold the whole pass's buffer
            c_p = c_t.T.to(torch.int64, memory_format=torch.contiguous_format)
            for j, u in enumerate(todo[i]):
                c = unpermute_columns(c_p[j * a:(j + 1) * a].clone(), p.prep.perm)
                measured, column_rates = measure_codes(c, rate_metric, SCALE_BITS, None)
                p.search.add(u, float(measured), (c, column_rates,
                                                  str(dtype).removeprefix("torch.")))
        if progress is not None:
            left = sum(not p.search.done(j) for p in probs for j in range(len(rates)))
            progress((k + 1) / config.max_search_rounds,
                     f"GPTQ-EC step search round {k + 1}: {left} rate(s) still searching")
    return [[_output(p.W, p.search, j, rate_metric, SCALE_BITS, p.prep)
             for j in range(len(rates))] for p in probs]


def _output(W, search: RateCurveSearch, i: int, rate_metric, side, prep) -> MethodOutput:
    _, u, measured, (codes, column_rates, precision) = search.best[i]
    step = _stored_step(u)
    W_hat = (codes.to(torch.float64) * step).to(W.dtype)
    info = {"step": step, "damping_abs": prep.damping_abs, "damping_used": prep.damping_used,
            "precision": precision,
            "dead_columns": torch.nonzero(prep.dead).flatten().tolist(),
            "search": search.points, "search_points": len(search.points),
            "target_rate": search.targets[i]}
    return MethodOutput(W_hat=W_hat, codes=codes,
                        scales={"step": torch.tensor([step], dtype=torch.float64)},
                        rate=measured, rate_metric=rate_metric,
                        column_rates=np.asarray(column_rates), side_info_bits=side, info=info)


def quantize_gptq_ec(W: torch.Tensor, sigma: torch.Tensor, rate: float,
                     config: GPTQECConfig = GPTQECConfig(), *,
                     rate_metric: str = "column_entropy", progress: ProgressFn | None = None,
                     cancel: CancelFn | None = None,
                     prepared: GPTQPrepared | None = None) -> MethodOutput:
    """Quantize W with entropy-coded GPTQ at a target measured rate.

    Parameters
    ----------
    W : torch.Tensor, shape (a, n)
        Weights in the basis of ``sigma``.
    sigma : torch.Tensor, shape (n, n)
        Σ_X.
    rate : float
        Target bits per weight under ``rate_metric`` (16 bits of step included).
    config : GPTQECConfig
    rate_metric : str
        ``column_entropy`` (default), ``pooled_entropy`` or ``coded_bits``.
    progress, cancel : callable, optional
        ``progress(fraction, message)``; ``cancel()`` returning True raises ``Cancelled``.
    prepared : GPTQPrepared, optional
        :func:`prepare_gptq_ec` of this ``sigma`` and config.

    Returns
    -------
    MethodOutput
        ``scales["step"]`` is the fp16-rounded step Δ; ``Ŵ = Δ · codes``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> out = quantize_gptq_ec(torch.randn(256, 8, generator=g), torch.eye(8), 3.0)
    >>> abs(out.rate - 3.0) <= 0.01
    True
    """
    return quantize_gptq_ec_rates(W, sigma, [rate], config, rate_metric=rate_metric,
                                  progress=progress, cancel=cancel, prepared=prepared)[0]
