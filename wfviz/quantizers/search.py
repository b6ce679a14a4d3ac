"""The one step search of the entropy-coded methods (GPTQ-EC, WaterSIC).

Both methods have one scalar knob, the step, and a measured rate that falls monotonically (up
to sampling noise) as ``u = log2 step`` grows, with slope ≈ −1 bit per doubling at high rate.
For a fixed ``W`` and Σ every pass, whatever target it was run for, adds a point of the *same*
curve, so all targets are searched together (:class:`RateCurveSearch`): each one interpolates
between the closest evaluated points that bracket it, or extrapolates from the closest point
with the local slope, through a quadratic of the three nearest points where that is safe (the
curve bends at low rate).

:func:`search_rates` is the driver both methods run. Every round it evaluates one candidate
step per unfinished target in a *single* SIC pass, copies of ``W`` stacked side by side (rows
are independent in the SIC), and several problems with equal shapes (a sweep's rotations) in
the same loop with a batch axis: the per-column loop overhead is paid once per round. A method
supplies only its pass (:class:`SearchKernel`). :func:`check_target_rate` is the one meaning
of a measurable target rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import Cancelled, WfvizError
from ..rates import (
    FAST_ESTIMATE_METRICS,
    log2_step_for_entropy,
    measurable_entropy_bits,
    measure_rate,
)
from .base import loop_dtype, stack_converted, widest_dtype


class RateCurveSearch:
    """Search ``u = log2 step`` so that ``rate(u)`` hits every target within ``tol``.

    Parameters
    ----------
    targets : sequence of float
        Target rates (bits per weight, measured as the method measures them).
    tol : float
        A target is done when some evaluated point is within ``tol`` bits of it.
    u0 : float
        The first guess for ``targets[0]``; the others start ``target − targets[0]`` bits
        away on the high-rate slope.
    starts : sequence of float, optional
        A first guess for every target instead (a model that knows the low-rate bend).

    Examples
    --------
    >>> s = RateCurveSearch([2.0, 4.0], 0.01, u0=0.0)
    >>> [s.candidate(i) for i in range(2)]
    [0.0, -2.0]
    >>> for u in (0.0, -2.0):
    ...     s.add(u, 2.0 - u, result=None)   # a curve rate(u) = 2 − u
    >>> s.done(0), s.done(1)
    (True, True)
    """

    def __init__(self, targets, tol: float, u0: float, *, starts=None):
        self.targets, self.tol, self.u0 = [float(t) for t in targets], tol, u0
        self.starts = None if starts is None else [float(u) for u in starts]
        self.points: list[tuple[float, float]] = []
        self.best: list = [None] * len(self.targets)  # (|error|, u, rate, result)

    def add(self, u: float, rate: float, result) -> None:
        """Record that the step ``2^u`` measured ``rate``; keep ``result`` if it is a best."""
        self.points.append((u, rate))
        for i, t in enumerate(self.targets):
            err = abs(rate - t)
            if self.best[i] is None or err < self.best[i][0]:
                self.best[i] = (err, u, rate, result)

    def done(self, i: int) -> bool:
        """Whether target ``i`` has a point within ``tol``."""
        return self.best[i] is not None and self.best[i][0] <= self.tol

    def pending(self) -> list[float]:
        """The new candidates of the unfinished targets, sorted (empty when nothing is left).

        A target whose candidate was evaluated already cannot get closer (the curve jumps
        over it, e.g. with very few rows) and keeps its best point.
        """
        seen = {u for u, _ in self.points}
        todo = {self.candidate(i) for i in range(len(self.targets)) if not self.done(i)}
        return sorted(todo - seen)

    def candidate(self, i: int) -> float:
        """The next ``u`` to try for target ``i``."""
        t = self.targets[i]
        if not self.points:
            return self.starts[i] if self.starts is not None else self.u0 + (self.targets[0] - t)
        above = [p for p in self.points if p[1] > t]  # step too small
        below = [p for p in self.points if p[1] <= t]
        if above and below:
            (u1, r1), (u2, r2) = max(above), min(below)
            curved = self._inverse_quadratic(t)
            if curved is not None and u1 < curved < u2:
                return curved
            return u1 + (r1 - t) * (u2 - u1) / (r1 - r2) if r1 != r2 else 0.5 * (u1 + u2)
        u, r = max(above) if above else min(below)
        step = (r - t) / self._slope(u)
        curved = self._inverse_quadratic(t)
        if curved is not None and 0.5 <= (curved - u) / step <= 2.0:
            return curved
        return u + step

    def _inverse_quadratic(self, t: float) -> float | None:
        """``u(t)`` from the quadratic through the three points of rate closest to ``t``.

        The curve bends at low rate, where a secant between points a bit apart misses the
        target by a few hundredths of a bit; the quadratic usually lands within the tolerance.
        """
        near = sorted(self.points, key=lambda p: abs(p[1] - t))[:3]
        rs = [r for _, r in near]
        if len(near) < 3 or len(set(rs)) < 3:
            return None
        u = 0.0
        for i, (ui, ri) in enumerate(near):
            w = 1.0
            for j, rj in enumerate(rs):
                if j != i:
                    w *= (t - rj) / (ri - rj)
            u += w * ui
        return u

    def _slope(self, u: float) -> float:
        """−d rate / d u near ``u`` from the two closest points, kept in [0.3, 1.5]."""
        near = sorted(self.points, key=lambda p: abs(p[0] - u))[:2]
        if len(near) < 2 or near[0][0] == near[1][0]:
            return 1.0
        slope = (near[0][1] - near[1][1]) / (near[1][0] - near[0][0])
        return min(max(slope, 0.3), 1.5)


def padded(candidates: list[float], width: int) -> list[float]:
    """``candidates`` with its last entry repeated up to ``width`` entries.

    Problems that share one batched loop must stack the same number of copies; the padding
    copies are run but not measured.

    Examples
    --------
    >>> padded([1.0, 2.0], 4)
    [1.0, 2.0, 2.0, 2.0]
    """
    return (candidates + candidates[-1:] * width)[:width]


def check_target_rate(rate, *, a: int, n: int, m: int, side_bits: float, rate_metric: str,
                      method: str) -> float:
    """Validate a target measured rate of an entropy-coded method; returns it as a float.

    The target counts every one of the ``a·n`` weights and the side information; what the
    codes must carry is the payload ``(rate − side/(a·n))·n/m`` bits per coded column (``m``
    columns are coded, the rest are dead). A histogram of ``N`` codes cannot read more than
    ``log2 N`` bits (:func:`~wfviz.rates.measurable_entropy_bits`), so higher payloads are
    refused rather than searched for in vain.

    Examples
    --------
    >>> check_target_rate(3, a=256, n=8, m=8, side_bits=16, rate_metric="column_entropy",
    ...                   method="GPTQ-EC")
    3.0
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) \
            or rate <= 0:
        raise WfvizError(f"The target rate must be a positive number of bits, got {rate!r}.")
    if rate_metric == "log_cardinality":
        raise WfvizError(f"{method}'s codes are unbounded, so its rate must be an entropy or a "
                         f"coded size, not log_cardinality; use column_entropy, pooled_entropy, "
                         f"coded_bits or parametric_coded.")
    floor = side_bits / (a * n)
    if rate <= floor:
        raise WfvizError(f"A rate of {rate} bits is not above {method}'s side information of "
                         f"{floor:.4g} bits per weight; ask for more bits.")
    payload = (float(rate) - floor) * n / m
    limit = measurable_entropy_bits(rate_metric, a, m)
    if payload >= limit:
        raise WfvizError(f"{rate} bits of {rate_metric} cannot be measured on {a} rows: a "
                         f"histogram of its codes reads at most {limit:.2f} bits per weight; ask "
                         f"for fewer bits, use more rows, or count with parametric_coded.")
    return float(rate)


def start_log2_steps(log2_sigma, payloads, a: int, rate_metric: str) -> list[float]:
    """First guesses of ``log2 step``, from each coded column's residual scale ``log2 σ_j``.

    Every column is modelled as a Gaussian rounded with the step, read as the metric reads it
    (:func:`~wfviz.rates.log2_step_for_entropy`: the plug-in shortfall of ``a`` codes for
    ``column_entropy``, one histogram over all columns for ``pooled_entropy``). The feedback,
    which adds to the residuals' variance at low rate, is left to the search.

    Examples
    --------
    >>> [round(u, 2) for u in start_log2_steps(np.zeros(4), [4.0], 10**6, "coded_bits")]
    [-1.95]
    """
    rows = a if rate_metric == "column_entropy" else None
    return log2_step_for_entropy(np.asarray(log2_sigma, dtype=np.float64), payloads, rows,
                                 pooled=rate_metric == "pooled_entropy")


@dataclass
class SearchProblem:
    """One (W, Σ) of a search, as its method prepared it.

    Attributes
    ----------
    W : torch.Tensor, shape (a, n)
        The weights, in the basis of Σ.
    prep : object
        The method's Σ-only preparation (factor, order, dead features).
    factor : torch.Tensor, shape (m, m)
        The matrix the pass stacks (GPTQ's feedback ``F``, WaterSIC's ``L``).
    side_bits : float
        Side information of the whole matrix, in bits.
    ymax : float
        Largest residual target the loop can see, for the precision bound.
    gain : callable
        ``gain()`` → how much the feedback can amplify errors (computed only when needed).
    search : RateCurveSearch
    data : dict
        What the method's pass needs besides (its decision-order weights, say).
    passes_run : int
        Stacked SIC passes this problem took part in.
    """

    W: torch.Tensor
    prep: object
    factor: torch.Tensor
    side_bits: float
    ymax: float
    gain: Callable[[], float]
    search: RateCurveSearch
    data: dict = field(default_factory=dict)
    passes_run: int = 0

    @property
    def columns(self) -> int:
        return int(self.factor.shape[-1])


@dataclass(frozen=True)
class SearchKernel:
    """What a method gives :func:`search_rates`: its name, how a ``u`` becomes the stored step,
    and its pass.

    ``run(problems, steps, factors, dtype, cancel)`` runs one SIC loop over ``problems`` (equal
    ``a`` and column count), problem ``i`` with the candidate steps ``steps[i]`` (all of one
    length), ``factors`` being their :attr:`SearchProblem.factor` stacked in ``dtype``; it
    returns, per problem, one candidate per step, each with ``.codes`` (an ``(a, n)`` int64
    tensor) and whatever the method keeps of it.
    """

    label: str
    step: Callable[[float], float]
    run: Callable


def search_rates(problems: list[SearchProblem], kernel: SearchKernel, *, max_passes: int,
                 precision: str, noise_limit: float, rate_metric: str, progress=None,
                 cancel=None) -> None:
    """Stacked SIC passes until every target of every problem is met (or passes run out).

    Each problem's :class:`RateCurveSearch` keeps, for every target, its best candidate as
    ``(candidate, column_rates)``; the padding candidates that even out a group's width are
    run but not measured.
    """
    factors: dict = {}
    for k in range(max_passes):
        poll = _heartbeat(cancel, progress, k, problems, kernel.label, rate_metric)
        todo = {i: p.search.pending() for i, p in enumerate(problems)}
        groups: dict = {}
        for i in (i for i, t in todo.items() if t):
            key = (problems[i].W.shape[0], problems[i].columns, problems[i].W.device)
            groups.setdefault(key, []).append(i)
        if not groups:
            break
        for members in groups.values():
            _run_group(problems, members, todo, kernel, factors, precision, noise_limit,
                       rate_metric, single=len(groups) == 1, cancel=poll)
        if progress is not None:
            left = sum(not p.search.done(j) for p in problems
                       for j in range(len(p.search.targets)))
            ran = sum(len(t) for t in todo.values())
            progress(0.8 * (1 - 0.5 ** (k + 1)),  # a typical search needs 2-4 rounds
                     f"{kernel.label} search round {k + 1}: {ran} step(s) in one loop, "
                     f"{left} rate(s) still searching ({rate_metric})")


HEARTBEAT_S = 0.5
"""Longest time between two progress reports while a pass runs (it polls once per block)."""


def _heartbeat(cancel, progress, k: int, problems, label: str, rate_metric: str):
    """The ``cancel`` the loops poll once per block of columns, reporting progress on the way
    (at most every :data:`HEARTBEAT_S`), so that a long pass still shows it is moving."""
    if progress is None:
        return cancel
    blocks = max(1, max(math.ceil(p.columns / 128) for p in problems))
    state = {"calls": 0, "last": time.monotonic()}

    def poll() -> bool:
        state["calls"] += 1
        now = time.monotonic()
        if now - state["last"] >= HEARTBEAT_S:
            state["last"] = now
            inner = min(state["calls"] / blocks, 0.99)
            progress(0.8 * (1 - 0.5 ** (k + inner)),
                     f"{label} search round {k + 1}: pass {inner:.0%} done ({rate_metric})")
        return cancel is not None and cancel()

    return poll


def best_of(problem: SearchProblem, i: int, rate_metric: str):
    """``(u, candidate, rate, column_rates)`` of target ``i``'s best point, its rate counted
    exactly (the search may have used a fast estimate)."""
    _, u, measured, (cand, column_rates) = problem.search.best[i]
    if rate_metric in FAST_ESTIMATE_METRICS:
        measured, column_rates = measure_rate(cand.codes, rate_metric,
                                              side_info_bits=problem.side_bits)
    return u, cand, float(measured), np.asarray(column_rates)


def _run_group(problems, members, todo, kernel, factors, precision, noise_limit, rate_metric,
               *, single, cancel) -> None:
    width = max(len(todo[i]) for i in members)
    steps = {i: [kernel.step(u) for u in padded(todo[i], width)] for i in members}
    dtype = widest_dtype(
        loop_dtype(precision, noise_limit, columns=problems[i].columns,
                   ymax_over_step=problems[i].ymax / min(steps[i]), gain=problems[i].gain())
        for i in members)
    key = (tuple(members), dtype)
    if key not in factors:  # the group's factors, stacked and converted once
        if single:
            factors.clear()  # a smaller group of unfinished problems replaces the last stack
        factors[key] = stack_converted([problems[i].factor for i in members], dtype,
                                       problems[members[0]].factor.device)
    results = kernel.run([problems[i] for i in members], [steps[i] for i in members],
                         factors[key], dtype, cancel)
    for i, candidates in zip(members, results, strict=True):
        p = problems[i]
        p.passes_run += 1
        for u, cand in zip(todo[i], candidates, strict=False):  # the padding is not measured
            if cancel is not None and cancel():  # a coded size of a large a × n takes a while
                raise Cancelled("The search was cancelled.")
            measured, column_rates = measure_rate(cand.codes, rate_metric,
                                                  side_info_bits=p.side_bits, exact=False)
            p.search.add(u, measured, (cand, column_rates))
