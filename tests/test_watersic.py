"""Tests of wfviz.quantizers.watersic: SIC invariants, rate search, rescalers, bad input."""

import math

import numpy as np
import pytest
import torch

from wfviz.errors import WfvizError
from wfviz.quantizers.base import Cancelled
from wfviz.quantizers.watersic import (
    SIDE_INFO_BITS,
    WaterSICConfig,
    fit_rescalers,
    prepare_watersic,
    quantize_watersic,
    watersic_pass,
)
from wfviz.theory import WATERSIC_GAP_BITS, it_distortion

F64 = torch.float64
PLAIN = WaterSICConfig(ls_gain=False, rescalers=False)


def _haar(n, seed):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def _powerlaw_sigma(n, seed=0, rotate=True):
    lam = torch.arange(1, n + 1, dtype=F64) ** -1.0
    if not rotate:
        return torch.diag(lam)
    q = _haar(n, seed + 1000)
    return (q * lam) @ q.T


def _weights(a, n, seed=0, dtype=F64):
    return torch.randn(a, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _distortion(W, W_hat, sigma):
    E = (W - W_hat).to(F64)
    return float(((E @ sigma.to(F64)) * E).sum()) / E.numel()


def _reference_sic(W, L, c, ls_gain):
    """Textbook SIC: Y = WL, last column to first, full-width feedback; codes and final errors."""
    Y = W.to(F64) @ L
    Z = torch.zeros_like(Y)
    whitened_err = torch.zeros(Y.shape[1], dtype=F64)
    for k in range(Y.shape[1] - 1, -1, -1):
        y = Y[:, k].clone()
        z = torch.round(y / c)
        zz = float(z @ z)
        g = (float(z @ y) / (c * zz) if zz > 0 else 0.0) if ls_gain else 1.0
        Z[:, k] = z
        whitened_err[k] = float(((y - c * g * z) ** 2).sum())
        Y -= (c / L[k, k] * g) * torch.outer(z, L[k, :])
    return Z, whitened_err


def test_cholesky_log_determinant_matches_slogdet():
    sigma = _powerlaw_sigma(40)
    prep = prepare_watersic(sigma)
    damped = sigma + prep.damping_abs * torch.eye(40, dtype=F64)
    assert prep.log2_det == pytest.approx(float(torch.linalg.slogdet(damped)[1]) / math.log(2),
                                          rel=1e-10)
    assert prep.damping_abs == pytest.approx(1e-4 * float(torch.diagonal(sigma).mean()))


@pytest.mark.parametrize("ls_gain", [False, True])
@pytest.mark.parametrize("block", [1, 16, 128])
def test_blocked_sic_gives_the_reference_codes(ls_gain, block):
    sigma = _powerlaw_sigma(70, seed=3)
    W = _weights(30, 70, seed=4)
    prep = prepare_watersic(sigma)
    res = watersic_pass(W, prep, 0.02, ls_gain=ls_gain, dtype=F64, block_size=block)
    Z, _ = _reference_sic(W, prep.L, 0.02, ls_gain)
    assert torch.equal(res.codes, Z.to(torch.int64))
    assert res.codes.abs().max() > 2  # not a trivial all-zero comparison


def test_whitened_error_is_the_sum_of_column_rounding_errors():
    sigma = _powerlaw_sigma(50, seed=5)
    W = _weights(400, 50, seed=6)
    prep = prepare_watersic(sigma)
    c = 0.01
    res = watersic_pass(W, prep, c, ls_gain=False, dtype=F64)
    _, col_err = _reference_sic(W, prep.L, c, False)
    total = float((((W - res.W_hat) @ prep.L) ** 2).sum())
    assert total == pytest.approx(float(col_err.sum()), rel=1e-9)
    assert total / W.numel() == pytest.approx(c * c / 12, rel=0.05)


def test_float32_pass_matches_float64_at_moderate_rate():
    sigma = _powerlaw_sigma(64, seed=7)
    W = _weights(256, 64, seed=8)
    prep = prepare_watersic(sigma)
    d32 = _distortion(W, watersic_pass(W, prep, 0.01, dtype=torch.float32).W_hat, sigma)
    d64 = _distortion(W, watersic_pass(W, prep, 0.01, dtype=F64).W_hat, sigma)
    assert d32 == pytest.approx(d64, rel=1e-3)


@pytest.mark.parametrize("metric,rate", [("column_entropy", 2.0), ("column_entropy", 5.0),
                                         ("pooled_entropy", 3.0)])
def test_rate_search_hits_the_target(metric, rate):
    sigma = _powerlaw_sigma(64, seed=9)
    W = _weights(512, 64, seed=10, dtype=torch.float32)
    out = quantize_watersic(W, sigma, rate, rate_metric=metric)
    assert abs(out.rate - rate) <= 0.01
    assert out.rate_metric == metric
    assert out.W_hat.dtype == W.dtype and out.codes.dtype == torch.int64
    assert out.column_rates.shape == (64,)
    assert out.info["search_passes"] <= 8


def test_side_information_is_counted_as_documented():
    sigma = _powerlaw_sigma(32, seed=11)
    W = _weights(100, 32, seed=12)
    on = quantize_watersic(W, sigma, 4.0, WaterSICConfig(rescalers=True))
    off = quantize_watersic(W, sigma, 4.0, WaterSICConfig(rescalers=False))
    assert on.side_info_bits == SIDE_INFO_BITS * (100 + 32)
    assert off.side_info_bits == SIDE_INFO_BITS * 32


def test_dead_columns_are_restored_as_zeros_and_charged():
    sigma = _powerlaw_sigma(30, seed=13)
    dead = [0, 7, 29]
    sigma[dead, :] = 0
    sigma[:, dead] = 0
    sigma[7, 7] = 1e-9  # tiny but positive still counts as dead
    W = _weights(200, 30, seed=14)
    out = quantize_watersic(W, sigma, 3.0, WaterSICConfig(rescalers=False))
    assert out.info["dead_columns"] == dead
    assert torch.all(out.W_hat[:, dead] == 0) and torch.all(out.codes[:, dead] == 0)
    assert out.side_info_bits == SIDE_INFO_BITS * 30
    assert abs(out.rate - 3.0) <= 0.01


def test_distortion_is_basis_free_at_fixed_column_entropy():
    n, a = 48, 2048
    sigma = _powerlaw_sigma(n, rotate=False)
    W = _weights(a, n, seed=15)
    q = _haar(n, 16)
    cfg = WaterSICConfig(rescalers=False)
    native = quantize_watersic(W, sigma, 5.0, cfg)
    rotated = quantize_watersic(W @ q.T, q @ sigma @ q.T, 5.0, cfg)
    d_native = _distortion(W, native.W_hat, sigma)
    d_rot = _distortion(W @ q.T, rotated.W_hat, q @ sigma @ q.T)
    # compare at one rate with the 2^{-2R} slope, then within 0.02 bit
    d_rot *= 2.0 ** (2 * (rotated.rate - native.rate))
    assert abs(0.5 * math.log2(d_rot / d_native)) < 0.02


def _rotations(n):
    from wfviz.rotations import get_rotation

    return {name: get_rotation(name, n, seed=1) for name in ("identity", "haar", "hadamard")}


def test_high_rate_gap_to_the_it_limit_is_a_quarter_bit_in_every_basis():
    n, a = 64, 4096
    sigma = _powerlaw_sigma(n, rotate=False)
    lam = torch.linalg.eigvalsh(sigma).clamp_min(0).numpy()
    W = _weights(a, n, seed=17)
    gaps = {}
    for name, rot in _rotations(n).items():
        Wr, Sr = rot.apply_weight(W), rot.apply_sigma(sigma)
        out = quantize_watersic(Wr, Sr, 6.0, WaterSICConfig(rescalers=False))
        d_it = float(it_distortion(lam, out.rate, float((W**2).mean())))
        gaps[name] = 0.5 * math.log2(_distortion(Wr, out.W_hat, Sr) / d_it)
    assert all(abs(g - WATERSIC_GAP_BITS) <= 0.03 for g in gaps.values()), gaps
    assert max(gaps.values()) - min(gaps.values()) <= 0.03, gaps


@pytest.mark.parametrize("rate", [2.0, 3.0])
def test_low_rate_not_worse_than_entropy_coded_gptq(rate):
    from wfviz.quantizers.gptq_ec import GPTQECConfig, quantize_gptq_ec

    n, a = 64, 1024
    sigma = _powerlaw_sigma(n, rotate=False)
    W = _weights(a, n, seed=18, dtype=torch.float32)
    for name, rot in _rotations(n).items():
        Wr, Sr = rot.apply_weight(W), rot.apply_sigma(sigma)
        ws = quantize_watersic(Wr, Sr, rate)
        gq = quantize_gptq_ec(Wr, Sr, rate, GPTQECConfig())
        d_ws = _distortion(Wr, ws.W_hat, Sr) * 2.0 ** (2 * (ws.rate - gq.rate))
        assert d_ws <= _distortion(Wr, gq.W_hat, Sr) * 1.01, name


def test_rescalers_never_increase_the_loss_and_help_without_gains():
    sigma = _powerlaw_sigma(40, seed=19)
    W = _weights(300, 40, seed=20)
    prep = prepare_watersic(sigma)
    res = watersic_pass(W, prep, 2.0, ls_gain=False, dtype=F64)
    W0 = res.codes.to(F64) * res.alpha
    fit = fit_rescalers(W, W0, sigma, torch.ones(40, dtype=F64))
    assert fit.loss_before == pytest.approx(_distortion(W, W0, sigma), rel=1e-9)
    W_fit = fit.t[:, None] * W0 * fit.g
    assert fit.loss_after == pytest.approx(_distortion(W, W_fit, sigma), rel=1e-6)
    assert fit.loss_after < 0.95 * fit.loss_before
    assert float(fit.t.abs().mean()) == pytest.approx(1.0)


def test_rescaled_output_reconstructs_from_its_scales():
    sigma = _powerlaw_sigma(32, seed=21)
    W = _weights(128, 32, seed=22)
    out = quantize_watersic(W, sigma, 2.0, WaterSICConfig(rescalers=True, fp16_scales=False))
    s = out.scales
    rebuilt = s["row_scale"][:, None] * out.codes.to(F64) * s["column_scale"]
    assert torch.allclose(rebuilt, out.W_hat.to(F64))
    assert out.info["loss_after_rescalers"] <= out.info["loss_before_rescalers"]
    assert _distortion(W, out.W_hat, sigma) == pytest.approx(out.info["loss_after_rescalers"],
                                                             rel=1e-6)


def test_stored_scales_are_fp16_and_cost_little():
    sigma = _powerlaw_sigma(32, seed=31)
    W = _weights(512, 32, seed=32)
    exact = quantize_watersic(W, sigma, 5.0, WaterSICConfig(rescalers=True, fp16_scales=False))
    half = quantize_watersic(W, sigma, 5.0, WaterSICConfig(rescalers=True))
    col = half.scales["column_scale"]
    ref = 2.0 ** math.floor(math.log2(float(col.abs().max())))
    assert torch.equal((col / ref).half().double(), col / ref)
    assert torch.equal(half.scales["row_scale"].half().double(), half.scales["row_scale"])
    d_exact, d_half = _distortion(W, exact.W_hat, sigma), _distortion(W, half.W_hat, sigma)
    assert d_half == pytest.approx(d_exact * 2.0 ** (2 * (exact.rate - half.rate)), rel=0.02)


def test_precision_auto_switches_to_float64_at_high_rate():
    sigma = _powerlaw_sigma(32, seed=23)
    W = _weights(256, 32, seed=24)
    assert quantize_watersic(W, sigma, 4.0).info["precision"] == "float32"
    prep = prepare_watersic(sigma)
    assert watersic_pass(W, prep, 1e-3).dtype == torch.float32
    assert watersic_pass(W, prep, 1e-6).dtype == F64  # about 17 bits per weight


def test_unmeasurable_rate_is_refused():
    sigma = _powerlaw_sigma(16, seed=29)
    with pytest.raises(WfvizError, match="at most 6.00 bits"):
        quantize_watersic(_weights(64, 16, seed=30), sigma, 8.0)


def test_progress_and_cancel():
    sigma = _powerlaw_sigma(16, seed=25)
    W = _weights(64, 16, seed=26)
    seen = []
    quantize_watersic(W, sigma, 3.0, progress=lambda f, msg: seen.append((f, msg)))
    assert seen and seen[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in seen)
    with pytest.raises(Cancelled):
        quantize_watersic(W, sigma, 3.0, cancel=lambda: True)


def test_prepared_factor_is_reused_and_checked():
    sigma = _powerlaw_sigma(16, seed=27)
    W = _weights(64, 16, seed=28)
    prep = prepare_watersic(sigma)
    a = quantize_watersic(W, sigma, 3.0, prepared=prep)
    b = quantize_watersic(W, sigma, 3.0)
    assert torch.equal(a.codes, b.codes)
    with pytest.raises(WfvizError, match="another"):
        quantize_watersic(W[:, :8], sigma[:8, :8], 3.0, prepared=prep)


@pytest.mark.parametrize("kwargs,match", [
    ({"rate": -1.0}, "positive"),
    ({"rate": 0.01}, "side information"),
    ({"rate_metric": "log_cardinality"}, "unbounded"),
    ({"W": np.ones((4, 4))}, "torch.Tensor"),
    ({"W": torch.ones(4, 5)}, "match"),
    ({"W": torch.full((4, 4), float("nan"))}, "NaN"),
    ({"W": torch.ones(4, 4, dtype=torch.int64)}, "floating-point"),
    ({"W": torch.zeros(64, 4)}, "zero in every live column"),
    ({"sigma": -torch.eye(4)}, "negative diagonal"),
    ({"sigma": torch.zeros(4, 4)}, "zero variance"),
    ({"sigma": torch.tensor([[1.0, 2.0, 0, 0], [2.0, 1.0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])},
     "positive definite"),
])
def test_bad_input_raises_one_clear_error(kwargs, match):
    args = {"W": torch.ones(4, 4), "sigma": torch.eye(4), "rate": 3.0} | kwargs
    metric = args.pop("rate_metric", "column_entropy")
    with pytest.raises(WfvizError, match=match):
        quantize_watersic(args["W"], args["sigma"], args["rate"], rate_metric=metric)


@pytest.mark.parametrize("kwargs", [{"damping": -1.0}, {"precision": "half"}, {"block_size": 0},
                                    {"rate_tol": 0.0}, {"dead_threshold": 2.0}])
def test_bad_config_raises(kwargs):
    with pytest.raises(WfvizError):
        WaterSICConfig(**kwargs)


def test_stacked_search_reports_passes_and_points_apart():
    """Six rates share every SIC pass: fewer passes than evaluated steps, all targets hit."""
    from wfviz.quantizers.watersic import quantize_watersic_rates

    W, S = _weights(256, 48), _powerlaw_sigma(48)
    outs = quantize_watersic_rates(W, S, [1, 2, 3, 4, 5, 6])
    info = outs[0].info
    assert info["search_passes"] < info["search_points"] <= 6 * info["search_passes"]
    assert info["search_passes"] <= 4
    assert all(abs(o.rate - r) <= 0.01 for o, r in zip(outs, range(1, 7), strict=True))


def test_batched_problems_give_each_problem_its_own_search():
    """Several bases in one batched loop (float64) give the codes each gives alone; a
    problem with dead features (another live count) runs in its own loop."""
    from wfviz.quantizers.watersic import quantize_watersic_many, quantize_watersic_rates

    n = 40
    S1, S2 = _powerlaw_sigma(n, seed=1), 3.0 * _powerlaw_sigma(n, seed=2)
    S3 = _powerlaw_sigma(n, rotate=False).clone()
    S3[:, 7] = S3[7, :] = 0.0  # one dead feature
    W = _weights(256, n, seed=5)
    cfg = WaterSICConfig(precision="float64")
    rates = [1.0, 2.5, 4.0]
    problems = [(W, S1, None), (W, S2, None), (W, S3, None)]
    batched = quantize_watersic_many(problems, rates, cfg)
    for (Wp, S, _), outs in zip(problems, batched, strict=True):
        alone = quantize_watersic_rates(Wp, S, rates, cfg)
        for a, b in zip(alone, outs, strict=True):
            assert torch.equal(a.codes, b.codes) and a.rate == b.rate
            assert torch.allclose(a.W_hat, b.W_hat)
    assert torch.all(batched[2][0].codes[:, 7] == 0)


def test_feedback_gain_is_the_largest_scaled_column_norm_below_the_diagonal():
    from wfviz.quantizers.watersic import _feedback_gain

    L = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [4.0, 3.0, 4.0]], dtype=F64)
    # column 0: (1/1, 4/4) → √2; column 1: (3/4) → 0.75
    assert _feedback_gain(L, rows=2) == pytest.approx(math.sqrt(2.0))


def test_gram_from_its_upper_blocks_is_the_product():
    from wfviz.quantizers.watersic_rescalers import _gram

    X = _weights(37, 29, seed=9)
    torch.testing.assert_close(_gram(X, block=8), X.T @ X, rtol=1e-12, atol=1e-12)
