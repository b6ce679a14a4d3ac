"""Entropy-coded GPTQ: unclipped equal steps, rate search, and the high-rate theory."""

import math

import numpy as np
import pytest
import torch

from wfviz.errors import WfvizError
from wfviz.quantizers.gptq import prepare_gptq, sic_pass
from wfviz.quantizers.gptq_ec import (
    GPTQECConfig,
    prepare_gptq_ec,
    quantize_gptq_ec,
    quantize_gptq_ec_rates,
)
from wfviz.theory import WATERSIC_GAP_BITS, cholesky_diag, gptq_gap_bits, it_distortion


def _problem(a=1024, n=64, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(a, n, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -spread, n, dtype=torch.float64)
    return W, (Q * lam) @ Q.T, lam


def test_hits_target_rates_with_one_search():
    W, S, _ = _problem(a=512)
    outs = quantize_gptq_ec_rates(W, S, [2.0, 3.5, 5.0])
    for target, out in zip([2.0, 3.5, 5.0], outs, strict=True):
        assert abs(out.rate - target) <= 0.01
        assert out.rate_metric == "column_entropy"
        assert out.side_info_bits == 16.0
        step = out.scales["step"].item()
        assert torch.allclose(out.W_hat, out.codes.double() * step)
        assert float(torch.tensor(step, dtype=torch.float16)) == step


def test_codes_are_unclipped_sic_with_one_step():
    W, S, _ = _problem(a=64, n=32)
    out = quantize_gptq_ec(W, S, 4.0, GPTQECConfig(precision="float64"))
    prep = prepare_gptq(S, 1e-4)
    step = out.scales["step"].item()
    codes, _ = sic_pass(W, prep.F, torch.full((64,), step, dtype=torch.float64))
    assert torch.equal(codes, out.codes)


def test_high_rate_gap_matches_theory():
    """At 6 bits the gap to the IT limit is 0.2546 + ½log2(AM(d)/GM(d)) (here ≈ 0.58 bit)."""
    W, S, lam = _problem(a=4096, n=64)
    out = quantize_gptq_ec(W, S, 6.0)
    E = W - out.W_hat
    D = float(torch.einsum("ij,jk,ik->", E, S, E)) / E.numel()
    it = float(it_distortion(lam.numpy(), out.rate, variance=float((W**2).mean())))
    predicted = WATERSIC_GAP_BITS + gptq_gap_bits(cholesky_diag(S.numpy(), damping=1e-4))
    assert predicted > 0.5
    assert 0.5 * math.log2(D / it) == pytest.approx(predicted, abs=0.04)


def test_other_metrics_and_prepared_reuse():
    W, S, _ = _problem(a=256, n=32)
    prep = prepare_gptq_ec(S)
    out = quantize_gptq_ec(W, S, 3.0, rate_metric="pooled_entropy", prepared=prep)
    assert out.rate_metric == "pooled_entropy"
    assert abs(out.rate - 3.0) <= 0.01
    assert isinstance(out.column_rates, np.ndarray)


def test_bad_input():
    W, S, _ = _problem(a=64, n=16)
    with pytest.raises(WfvizError, match="unbounded"):
        quantize_gptq_ec(W, S, 3.0, rate_metric="log_cardinality")
    with pytest.raises(WfvizError, match="cannot be measured"):
        quantize_gptq_ec(W, S, 7.0)
    with pytest.raises(WfvizError, match="target rate"):
        quantize_gptq_ec(W, S, -1.0)
    with pytest.raises(WfvizError, match="another"):
        quantize_gptq_ec(W, S, 2.0, prepared=prepare_gptq_ec(torch.eye(8)))
    with pytest.raises(WfvizError, match="precision"):
        GPTQECConfig(precision="half")
    with pytest.raises(WfvizError, match="at least one"):
        quantize_gptq_ec_rates(W, S, [])


def test_progress_and_cancel():
    from wfviz.quantizers.base import Cancelled

    W, S, _ = _problem(a=64, n=16)
    seen = []
    quantize_gptq_ec(W, S, 3.0, progress=lambda f, m: seen.append((f, m)))
    assert seen and all(0 < f <= 1 for f, _ in seen) and "GPTQ-EC" in seen[0][1]
    with pytest.raises(Cancelled):
        quantize_gptq_ec(W, S, 3.0, cancel=lambda: True)


def test_batched_problems_give_each_problem_its_own_search():
    """Two bases in one batched loop give the codes each gives alone (float64 loop), even
    when one needs more search rounds than the other (the padding is not measured)."""
    from wfviz.quantizers.gptq_ec import quantize_gptq_ec_many

    W1, S1, _ = _problem(a=256, n=48, seed=1)
    W2, S2, _ = _problem(a=256, n=48, seed=2, spread=6.0)
    cfg = GPTQECConfig(precision="float64")
    rates = [1.0, 2.5, 4.0]
    both = quantize_gptq_ec_many([(W1, S1, None), (W2, 4.0 * S2, None)], rates, cfg)
    assert len(both[0][0].info["search"]) != len(both[1][0].info["search"])  # padded rounds
    for (W, S), batched in zip([(W1, S1), (W2, 4.0 * S2)], both, strict=True):
        alone = quantize_gptq_ec_rates(W, S, rates, cfg)
        for a, b in zip(alone, batched, strict=True):
            assert torch.equal(a.codes, b.codes) and a.rate == b.rate
            assert a.info["search"] == b.info["search"]


def test_batched_problems_of_different_shapes_run_in_their_own_loops():
    from wfviz.quantizers.gptq_ec import quantize_gptq_ec_many

    W1, S1, _ = _problem(a=64, n=16)
    W2, S2, _ = _problem(a=32, n=16)
    both = quantize_gptq_ec_many([(W1, S1, None), (W2, S2, None)], [2.0])
    alone = quantize_gptq_ec(W2, S2, 2.0)
    assert torch.equal(both[1][0].codes, alone.codes)
    assert abs(both[0][0].rate - 2.0) <= 0.01


def test_start_guesses_model_the_low_rate_bend_and_the_plugin_shortfall():
    """On white Σ the feedback is zero, so the first guesses are the whole model: every
    target lands within 0.02 bit in the first round."""
    g = torch.Generator().manual_seed(4)
    W = torch.randn(256, 128, generator=g, dtype=torch.float64)
    outs = quantize_gptq_ec_rates(W, torch.eye(128, dtype=torch.float64), [1.0, 3.0, 5.0],
                                  GPTQECConfig(max_search_passes=12))
    for out in outs:
        first = out.info["search"][:3]
        assert min(abs(r - out.info["target_rate"]) for _, r in first) < 0.02


def test_no_problems_give_no_outputs():
    from wfviz.quantizers.gptq_ec import quantize_gptq_ec_many
    from wfviz.quantizers.watersic import quantize_watersic_many

    assert quantize_gptq_ec_many([], [2.0]) == [] and quantize_watersic_many([], [2.0]) == []
