"""The one step search: RateCurveSearch on synthetic rate curves, the measurable-rate rule,
first guesses, and the driver on a toy pass."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from wfviz.errors import WfvizError
from wfviz.quantizers.search import (
    RateCurveSearch,
    SearchKernel,
    SearchProblem,
    check_target_rate,
    padded,
    search_rates,
    start_log2_steps,
)
from wfviz.rates import rounded_gaussian_entropy


def _run(search: RateCurveSearch, curve, rounds: int = 20) -> int:
    """Evaluate the search's candidates on ``curve(u)`` until done; returns rounds used."""
    for k in range(rounds):
        todo = search.pending()
        if not todo:
            return k
        for u in todo:
            search.add(u, curve(u), result=u)
    return rounds


def test_linear_curve_is_solved_in_one_round_from_good_starts():
    s = RateCurveSearch([2.0, 5.0], 0.01, u0=0.0)
    assert _run(s, lambda u: 2.0 - u) == 1  # u0 is right for 2; slope −1 gives 5 at once
    assert all(s.done(i) for i in range(2))


def test_bent_low_rate_curve_converges_for_every_target():
    # the entropy of a rounded unit Gaussian: flat at 0 below the water, slope −1 above
    def curve(u):
        return float(rounded_gaussian_entropy(2.0 ** -u))

    targets = [0.3, 1.0, 2.5, 6.0]
    s = RateCurveSearch(targets, 0.005, u0=0.0)
    rounds = _run(s, curve)
    assert rounds <= 8
    for i, t in enumerate(targets):
        err, u, rate, result = s.best[i]
        assert abs(rate - t) <= 0.005 and result == u and curve(u) == rate


def test_a_curve_that_jumps_over_the_target_keeps_its_best_point():
    s = RateCurveSearch([1.5], 0.01, u0=0.0)
    rounds = _run(s, lambda u: float(np.floor(3.0 - u)), rounds=12)  # 1.5 is never hit
    err, _, rate, _ = s.best[0]
    assert rounds == 12 and not s.done(0)  # the caller's pass limit ends it
    assert err == pytest.approx(0.5) and rate in (1.0, 2.0)


def test_starts_are_used_first_and_padding_repeats_the_last():
    s = RateCurveSearch([1.0, 2.0], 0.01, u0=0.0, starts=[-3.0, 7.0])
    assert s.pending() == [-3.0, 7.0]
    assert padded([1.0], 3) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("rate,metric,match", [
    (0.0, "column_entropy", "positive"),
    (float("nan"), "column_entropy", "positive"),
    (True, "column_entropy", "positive"),
    (3.0, "log_cardinality", "unbounded"),
    (16 / (64 * 8) / 2, "column_entropy", "side information"),
    (6.5, "column_entropy", "at most 6.00 bits"),
])
def test_check_target_rate_refuses_with_one_sentence(rate, metric, match):
    with pytest.raises(WfvizError, match=match):
        check_target_rate(rate, a=64, n=8, m=8, side_bits=16, rate_metric=metric, method="X")


def test_measurable_rate_counts_the_payload_of_the_coded_columns_only():
    # 4 of 8 columns coded: the payload per coded column is twice the rate per weight
    with pytest.raises(WfvizError, match="cannot be measured"):
        check_target_rate(3.2, a=64, n=8, m=4, side_bits=0, rate_metric="column_entropy",
                          method="X")
    assert check_target_rate(2.9, a=64, n=8, m=4, side_bits=0, rate_metric="column_entropy",
                             method="X") == 2.9
    assert check_target_rate(8.9, a=64, n=8, m=8, side_bits=0, rate_metric="pooled_entropy",
                             method="X") == 8.9  # one histogram of 512 codes


def test_start_guesses_land_near_the_model_entropy():
    log2_sigma = np.log2([0.5, 1.0, 4.0])
    for h in (1.0, 3.0, 6.0):
        u = start_log2_steps(log2_sigma, [h], 10**9, "coded_bits")[0]
        model = rounded_gaussian_entropy(2.0 ** (log2_sigma - u)).mean()
        assert model == pytest.approx(h, abs=1e-6)


@dataclass
class _Cand:
    codes: torch.Tensor


def test_driver_groups_problems_by_shape_and_runs_one_pass_per_round():
    calls = []

    def run(problems, steps, factors, dtype, cancel):
        calls.append((len(problems), len(steps[0]), tuple(factors.shape)))
        out = []
        for p, st in zip(problems, steps, strict=True):
            out.append([_Cand(torch.round(p.W / s).to(torch.int64)) for s in st])
        return out

    g = torch.Generator().manual_seed(0)
    probs = []
    for a in (256, 256, 128):
        W = torch.randn(a, 4, generator=g)
        probs.append(SearchProblem(W=W, prep=None, factor=torch.eye(4), side_bits=0.0,
                                   ymax=float(W.abs().max()), gain=lambda: 0.0,
                                   search=RateCurveSearch([3.0], 0.02, 0.0,
                                                          starts=[math.log2(0.3)])))
    search_rates(probs, SearchKernel("toy", lambda u: 2.0**u, run), max_passes=10,
                 precision="auto", noise_limit=3e-3, rate_metric="coded_bits")
    assert all(p.search.done(0) for p in probs)
    # the first round: one loop for the two problems of 256 rows, one for the 128-row one
    assert sorted(c[:2] for c in calls[:2]) == [(1, 1), (2, 1)]
    assert all(p.passes_run >= 1 for p in probs)


def test_cancel_is_polled_between_the_candidates_a_pass_measured():
    """After a pass, each candidate's coded size is counted (seconds at a large a × n): a
    cancel that comes in then stops the search there, not a whole round later."""
    from wfviz.errors import Cancelled
    from wfviz.quantizers.gptq_ec import quantize_gptq_ec_rates

    W = torch.randn(256, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def cancel():  # the pass polls once (16 columns, one block); then the measuring begins
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled, match="search was cancelled"):
        quantize_gptq_ec_rates(W, torch.eye(16, dtype=torch.float64), [3.0, 4.0],
                               rate_metric="parametric_coded", cancel=cancel)
