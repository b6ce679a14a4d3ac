"""The working basis: dead features out before rotating, exact distortions, rate bookkeeping."""

import numpy as np
import pytest
import torch

import wfviz
from wfviz.basis import weighted_errors, working_basis
from wfviz.quantizers.base import SIDE_INFO_BITS


def _rank_deficient(n=96, dead=(3, 40, 77), seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4 * n, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, n)[:, None]
    S = X @ X.T / X.shape[1]
    for j in dead:
        S[j, :] = 0.0
        S[:, j] = 0.0
    return S


@pytest.mark.parametrize("n", [8, 200])
def test_weighted_errors_match_the_plain_product(n):
    g = torch.Generator().manual_seed(n)
    E = torch.randn(7, n, generator=g, dtype=torch.float64)
    X = torch.randn(n, n, generator=g, dtype=torch.float64)
    S = X @ X.T
    expected = ((E @ S) * E).sum(1)
    assert torch.allclose(weighted_errors(E, S), expected, rtol=1e-12, atol=0)


def test_dead_features_are_taken_out_before_rotating_and_come_back_as_zeros():
    S = _rank_deficient()
    W = torch.randn(5, S.shape[0], dtype=torch.float64)
    b = working_basis(W, S, "hadamard", seed=1)
    assert (b.m, b.dead) == (93, 3)
    back = b.to_original(b.W)
    live = [j for j in range(S.shape[0]) if j not in (3, 40, 77)]
    assert torch.allclose(back[:, live], W[:, live], atol=1e-12)
    assert torch.all(back[:, [3, 40, 77]] == 0)


def test_distortion_in_the_working_basis_equals_the_original_basis():
    S = _rank_deficient()
    S[3, 3] = 1e-9  # dead by the rule, but it still weighs a little in the loss
    W = torch.randn(6, S.shape[0], dtype=torch.float64)
    b = working_basis(W, S, "haar", seed=2)
    W_hat_rot = b.W + 0.01 * torch.randn_like(b.W)
    E = W - b.to_original(W_hat_rot)
    expected = float(((E @ S) * E).sum()) / E.numel()
    assert b.distortions([W_hat_rot])[0] == pytest.approx(expected, rel=1e-10)
    # the energy only scales relative distortions: float32 products with float64 sums
    assert b.energy() == pytest.approx(float(((W @ S) * W).sum()) / W.numel(), rel=1e-6)


def test_rates_count_every_weight_and_the_dead_indices():
    S = _rank_deficient()
    b = working_basis(torch.randn(16, S.shape[0], dtype=torch.float64), S)
    asked = b.method_rate(3.0, integer_rates=False)
    assert b.layer_rate(asked) == pytest.approx(3.0, abs=1e-12)
    assert b.layer_rate(4.0) == pytest.approx((4.0 * 16 * 93 + SIDE_INFO_BITS * 3) / (16 * 96))
    assert b.method_rate(4, integer_rates=True) == 4


def test_watersic_is_basis_free_on_a_rank_deficient_sigma():
    # the zeroed-channel case: before, identity and Haar differed by ~0.2 bit
    S = _rank_deficient(n=128, dead=(5,))
    W = np.random.default_rng(0).standard_normal((512, 128))
    gaps = {}
    for rot in ("identity", "hadamard", "haar"):
        r = wfviz.quantize(W, S, "watersic", rate=3.0, rotation=rot)
        gaps[rot] = 0.5 * np.log2(r.distortion)
    assert max(gaps.values()) - min(gaps.values()) < 0.03, gaps


def test_a_quantize_result_says_how_many_features_were_live():
    S = _rank_deficient()
    r = wfviz.quantize(np.ones((4, S.shape[0])), S, "rtn", rate=4)
    assert (r.info["live_features"], r.info["dead_features"]) == (93, 3)
    assert np.all(r.W_hat[:, [3, 40, 77]] == 0)
