"""Entropy-coded GPTQ: the equal-rate SIC variant that the high-rate theory analyses.

Every column is rounded with one uniform step ``Δ`` in the weight domain, with no clipping
(codes ``round(w/Δ)`` are unbounded integers), and the error is fed forward exactly as in GPTQ
(same damped factor, same lazy blocks; see :mod:`wfviz.quantizers.gptq`). The codes are meant to
be entropy coded, so the rate is measured on them (default: per-column empirical entropy) plus
16 bits for the one fp16 step. At high rate its distortion is ``(2πe/12)·σ²·AM(d)·2^{−2R}``,
``½ log2(AM(d)/GM(d))`` bits above WaterSIC.

The step is searched on ``log2 Δ`` by the search driver shared with WaterSIC
(:func:`~wfviz.quantizers.search.search_rates`); this module gives it only its pass, which
stacks copies of ``W`` with one candidate step each in one GPTQ loop. The accepted codes are
those of the best evaluated point, so no extra pass runs for the answer.

Precision: ``"auto"`` runs the column loop in float32 unless the a-priori bound on float32
rounding noise (:func:`~wfviz.quantizers.base.loop_dtype`, with ``max|W|/Δ`` and the feedback
gain ``max_j ‖F_<j,j‖``) exceeds ``fp32_noise_limit``; then float64. The Cholesky factors are
always float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import WfvizError
from ..validation import DEAD_THRESHOLD, check_sigma, check_weights
from .base import (
    SIDE_INFO_BITS,
    CancelFn,
    MethodOutput,
    ProgressFn,
    check_damping,
    check_precision,
    check_search,
    fp16_value,
)
from .gptq import GPTQPrepared, prepare_gptq, sic_pass_transposed, unpermute_columns
from .search import (
    RateCurveSearch,
    SearchKernel,
    SearchProblem,
    best_of,
    check_target_rate,
    search_rates,
    start_log2_steps,
)


@dataclass(frozen=True)
class GPTQECConfig:
    """Knobs of entropy-coded GPTQ.

    Attributes
    ----------
    damping : float
        Relative damping of ``H = 2Σ``. The default 1e-4 is WaterSIC's, not GPTQ's 0.01, so
        that the two SIC methods run on the same damped Σ and the measured gap is the
        ``½ log2(AM(d)/GM(d))`` of the theory (a damping of 0.01 distorts ``d`` of the small
        eigen-directions and adds its own loss).
    dead_threshold : float
        Dead-feature threshold (:func:`wfviz.validation.dead_mask`).
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
    max_search_passes : int
        Most stacked SIC passes of the step search.

    Examples
    --------
    >>> GPTQECConfig().rate_tol
    0.01
    """

    damping: float = 1e-4
    dead_threshold: float = DEAD_THRESHOLD
    act_order: bool = False
    block_size: int = 128
    precision: str = "auto"
    fp32_noise_limit: float = 3e-3
    rate_tol: float = 0.01
    max_search_passes: int = 12

    def __post_init__(self):
        check_damping(self.damping, self.dead_threshold)
        if int(self.block_size) != self.block_size or self.block_size < 1:
            raise WfvizError(f"block_size must be a positive integer, got {self.block_size}.")
        check_precision(self.precision)
        check_search(self.rate_tol, self.max_search_passes)


def prepare_gptq_ec(sigma: torch.Tensor, config: GPTQECConfig = GPTQECConfig()) -> GPTQPrepared:
    """The Σ-only part (damped feedback factor, order, dead columns), shared by every rate.

    Examples
    --------
    >>> prepare_gptq_ec(torch.eye(4)).n
    4
    """
    return prepare_gptq(sigma, config.damping, config.act_order,
                        dead_threshold=config.dead_threshold)


@dataclass
class StepResult:
    """One candidate of the search: the codes of one stacked copy, and the loop's precision."""

    codes: torch.Tensor
    dtype: torch.dtype


def _problem(W, sigma, prep, rates, config, rate_metric) -> SearchProblem:
    check_weights(W)
    a, n = W.shape
    sigma = check_sigma(sigma, n, values=prep is None)
    for r in rates:
        check_target_rate(r, a=a, n=n, m=n, side_bits=SIDE_INFO_BITS, rate_metric=rate_metric,
                          method="GPTQ-EC")
    prep = prep if prep is not None else prepare_gptq_ec(sigma, config)
    if prep.n != n:
        raise WfvizError("The prepared GPTQ factor is for another Σ; prepare it again.")
    Wd = W.masked_fill(prep.dead[None, :].to(W.device), 0.0) if prep.dead.any() else W
    if prep.perm is not None:
        Wd = Wd[:, prep.perm.to(W.device)]
    s = (Wd.to(torch.float64) ** 2).mean(0).cpu().numpy()
    if not (s > 0).any():
        raise WfvizError("W is zero in every column; there is nothing to quantize.")
    payloads = [float(r) - SIDE_INFO_BITS / (a * n) for r in rates]
    starts = start_log2_steps(0.5 * np.log2(np.maximum(s, 1e-300)), payloads, a, rate_metric)
    return SearchProblem(W=W, prep=prep, factor=prep.F, side_bits=SIDE_INFO_BITS,
                         ymax=float(Wd.abs().max()), gain=lambda: prep.feedback,
                         search=RateCurveSearch(rates, config.rate_tol, 0.0, starts=starts),
                         data={"Wd_t": Wd.T.contiguous()})


def _kernel(config: GPTQECConfig) -> SearchKernel:
    def run(problems, steps, F, dtype, cancel):
        a, width = problems[0].W.shape[0], len(steps[0])
        stacked = torch.stack([p.data["Wd_t"].to(dtype).repeat(1, width) for p in problems])
        row_step = torch.tensor(steps, dtype=dtype, device=stacked.device)
        codes_t, _ = sic_pass_transposed(stacked, F, row_step.repeat_interleave(a, dim=1),
                                         block_size=int(config.block_size), cancel=cancel)
        del stacked
        out = []
        for c_t, p in zip(codes_t, problems, strict=True):
            # one transposing conversion per problem; each candidate is then a row block,
            # copied so that a kept result does not hold the whole pass's buffer
            c_p = c_t.T.to(torch.int64, memory_format=torch.contiguous_format)
            out.append([StepResult(unpermute_columns(c_p[j * a:(j + 1) * a].clone(), p.prep.perm),
                                   dtype) for j in range(width)])
        return out

    return SearchKernel("GPTQ-EC", lambda u: fp16_value(2.0**u), run)


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


def quantize_gptq_ec_many(problems, rates, config: GPTQECConfig = GPTQECConfig(), *,
                          rate_metric: str = "column_entropy", progress: ProgressFn | None = None,
                          cancel: CancelFn | None = None) -> list[list[MethodOutput]]:
    """Entropy-coded GPTQ of several independent problems at the same targets, in one loop.

    Each round runs the candidates of all unfinished problems of one shape in one batched
    SIC pass (:func:`~wfviz.quantizers.search.search_rates`). Below n ≈ 2048 the column loop
    is bound by per-operation overhead, so the three rotations of a sweep cost little more
    than one.

    Parameters
    ----------
    problems : sequence of (W, sigma, prepared)
        Weights and Σ_X, each in its own basis, with :func:`prepare_gptq_ec` of that Σ or
        None.
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
    search_rates(probs, _kernel(config), max_passes=config.max_search_passes,
                 precision=config.precision, noise_limit=config.fp32_noise_limit,
                 rate_metric=rate_metric, progress=progress, cancel=cancel)
    return [[_output(p, j, rate_metric) for j in range(len(rates))] for p in probs]


def _output(p: SearchProblem, i: int, rate_metric: str) -> MethodOutput:
    u, cand, measured, column_rates = best_of(p, i, rate_metric)
    step = fp16_value(2.0**u)
    W_hat = (cand.codes.to(torch.float64) * step).to(p.W.dtype)
    info = {"step": step, "damping_abs": p.prep.damping_abs,
            "damping_used": p.prep.damping_used,
            "precision": str(cand.dtype).removeprefix("torch."),
            "dead_columns": torch.nonzero(p.prep.dead).flatten().tolist(),
            "search": [(2.0**v, r) for v, r in p.search.points],
            "search_passes": p.passes_run, "search_points": len(p.search.points),
            "target_rate": p.search.targets[i]}
    return MethodOutput(W_hat=W_hat, codes=cand.codes,
                        scales={"step": torch.tensor([step], dtype=torch.float64)},
                        rate=measured, rate_metric=rate_metric,
                        column_rates=column_rates, side_info_bits=p.side_bits,
                        info=info)


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
