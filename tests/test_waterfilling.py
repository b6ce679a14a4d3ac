import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wfviz.errors import WfvizError
from wfviz.waterfilling import WaterfillResult, distortion_rate_curve, reverse_waterfill

# Spectra with zeros, repeated values and a dynamic range of 1e-12..1e6.
_value = st.one_of(st.just(0.0), st.sampled_from([1.0, 2.5]),
                   st.floats(-12, 6).map(lambda e: 10.0**e))
spectra = st.lists(_value, min_size=1, max_size=40).filter(lambda v: max(v) > 0)
variances = st.sampled_from([1.0, 0.01, 3.0])
rates = st.floats(0, 12)
SETTINGS = settings(max_examples=50, deadline=None)


def mean_rate_at(v, theta):
    """Mean rate at water level θ, summed exactly (independent of the module's segment sums)."""
    return math.fsum(0.5 * math.log2(x / theta) for x in v if x > theta) / len(v)


def mean_distortion_at(v, theta):
    return math.fsum(min(theta, x) for x in v) / len(v)


@SETTINGS
@given(spectra, rates, variances)
def test_sum_identities_and_target_rate(lam, rate, var):
    res = reverse_waterfill(lam, rate=rate, variance=var)
    assert res.rate == pytest.approx(rate, rel=1e-9, abs=1e-12)
    assert np.mean(res.rates) == pytest.approx(res.rate, rel=1e-12, abs=1e-15)
    assert np.mean(res.distortions) == pytest.approx(res.distortion, rel=1e-12)
    v = var * np.asarray(lam)
    np.testing.assert_array_equal(res.distortions, np.minimum(res.theta, v))


@SETTINGS
@given(spectra, rates, variances)
def test_theta_exact_to_1e10_relative(lam, rate, var):
    v = var * np.asarray(lam)
    theta = reverse_waterfill(lam, rate=rate, variance=var).theta
    if rate > 0:  # the mean rate is strictly decreasing in θ below max(v)
        assert mean_rate_at(v, theta * (1 - 1e-10)) >= rate >= mean_rate_at(v, theta * (1 + 1e-10))
    else:
        assert theta == v.max()


@SETTINGS
@given(spectra, rates, variances)
def test_round_trip_rate_theta_distortion_rate(lam, rate, var):
    res = reverse_waterfill(lam, rate=rate, variance=var)
    back = reverse_waterfill(lam, distortion=res.distortion, variance=var)
    assert back.rate == pytest.approx(rate, rel=1e-8, abs=1e-10)
    v = var * np.asarray(lam)
    d = res.distortion
    theta = back.theta
    slack = 1e-14 * d  # at rate 0, D is flat above θ = max(v)
    low = mean_distortion_at(v, theta * (1 - 1e-10))
    assert low - slack <= d <= mean_distortion_at(v, theta * (1 + 1e-10)) + slack


@SETTINGS
@given(spectra, st.lists(rates, min_size=2, max_size=10), variances)
def test_distortion_decreases_with_rate(lam, rs, var):
    rs = np.sort(rs)
    d = distortion_rate_curve(lam, rs, variance=var)
    assert np.all(np.diff(d) <= 1e-15 * d[0])
    strict = np.diff(rs) > 1e-9
    assert np.all(np.diff(d)[strict] < 0)


@SETTINGS
@given(spectra, st.floats(0, 1), variances)
def test_high_rate_closed_form(lam, extra, var):
    lam = np.asarray([x for x in lam if x > 0])
    log2_gm = np.mean(np.log2(lam))
    rate = 0.5 * (log2_gm - np.log2(lam.min())) + extra  # every coordinate above the water
    res = reverse_waterfill(lam, rate=rate, variance=var)
    np.testing.assert_allclose(res.rates, rate + 0.5 * (np.log2(lam) - log2_gm), atol=1e-9)
    assert res.distortion == pytest.approx(var * 2.0 ** (log2_gm - 2 * rate), rel=1e-9)


@SETTINGS
@given(st.integers(1, 50), st.floats(1e-12, 1e6), rates, variances)
def test_all_equal_eigenvalues_get_equal_rates(n, value, rate, var):
    res = reverse_waterfill(np.full(n, value), rate=rate, variance=var)
    np.testing.assert_allclose(res.rates, rate, atol=1e-12)
    assert res.distortion == pytest.approx(var * value * 2.0 ** (-2 * rate), rel=1e-10)


@SETTINGS
@given(spectra, rates)
def test_equal_eigenvalues_get_equal_rates(lam, rate):
    lam = np.asarray(lam + lam)  # every value at least twice
    res = reverse_waterfill(lam, rate=rate)
    for value in np.unique(lam):
        assert np.ptp(res.rates[lam == value]) == 0


@SETTINGS
@given(spectra, st.floats(1, 10), variances)
def test_distortion_at_or_above_mean_gives_rate_zero(lam, factor, var):
    v = var * np.asarray(lam)
    res = reverse_waterfill(lam, distortion=factor * v.mean(), variance=var)
    assert res.rate == 0 and np.all(res.rates == 0)
    assert res.theta == v.max()
    assert res.distortion == pytest.approx(v.mean(), rel=1e-12)


def test_rate_zero_gives_theta_at_largest_variance():
    res = reverse_waterfill([3.0, 1.0, 0.0], rate=0.0, variance=2.0)
    assert res.theta == 6.0
    assert res.rates.tolist() == [0.0, 0.0, 0.0]
    assert res.distortion == pytest.approx(8.0 / 3)


def test_two_coordinate_example_in_input_order():
    res = reverse_waterfill([1.0, 4.0], rate=0.5)
    assert isinstance(res, WaterfillResult)
    assert res.theta == pytest.approx(1.0)
    np.testing.assert_allclose(res.rates, [0.0, 1.0])
    np.testing.assert_allclose(res.distortions, [1.0, 1.0])


def test_zero_eigenvalues_get_no_bits():
    res = reverse_waterfill([0.0, 4.0, 0.0, 1.0], rate=3.0)
    assert res.rates[0] == res.rates[2] == 0
    assert res.distortions[0] == res.distortions[2] == 0
    assert res.rate == pytest.approx(3.0)


def test_all_zero_spectrum_needs_no_bits():
    for kwargs in ({"rate": 2.0}, {"rate": 0.0}, {"distortion": 1.0}):
        res = reverse_waterfill(np.zeros(5), **kwargs)
        assert (res.theta, res.rate, res.distortion) == (0.0, 0.0, 0.0)
        assert not np.any(res.rates)
    assert distortion_rate_curve(np.zeros(3), [0.0, 4.0]).tolist() == [0.0, 0.0]


def test_vectorized_matches_scalar_calls():
    lam = np.random.default_rng(1).gamma(0.3, size=300)
    targets = np.array([0.0, 0.1, 1.0, 3.0, 9.0])
    res = reverse_waterfill(lam, rate=targets)
    assert res.theta.shape == (5,) and res.rates.shape == (5, 300)
    for i, r in enumerate(targets):
        one = reverse_waterfill(lam, rate=r)
        assert one.theta == res.theta[i]
        np.testing.assert_array_equal(one.rates, res.rates[i])
    dres = reverse_waterfill(lam, distortion=res.distortion)
    np.testing.assert_allclose(dres.theta, res.theta, rtol=1e-10)


def test_curve_matches_full_solution_and_scalar_shape():
    lam = np.logspace(-12, 6, 1000)
    rs = np.linspace(0, 20, 50)
    np.testing.assert_allclose(distortion_rate_curve(lam, rs),
                               reverse_waterfill(lam, rate=rs).distortion, rtol=1e-12)
    assert distortion_rate_curve(lam, 2.0).shape == ()


def test_wide_dynamic_range_large_n_is_exact():
    lam = np.random.default_rng(2).permutation(np.logspace(-12, 6, 14336))
    for rate in (0.01, 0.7, 4.0, 30.0):
        theta = reverse_waterfill(lam, rate=rate).theta
        low, high = theta * (1 - 1e-10), theta * (1 + 1e-10)
        assert mean_rate_at(lam, low) >= rate >= mean_rate_at(lam, high)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"rate": 1.0, "distortion": 0.1}, "exactly one"),
        ({"rate": -0.5}, ">= 0"),
        ({"rate": [1.0, -1.0]}, ">= 0"),
        ({"rate": float("nan")}, "finite"),
        ({"rate": [[1.0]]}, "1-D"),
        ({"distortion": 0.0}, "> 0"),
        ({"distortion": -1.0}, "> 0"),
        ({"rate": 1.0, "variance": 0.0}, "variance"),
        ({"rate": 1.0, "variance": float("inf")}, "variance"),
    ],
)
def test_bad_requests(kwargs, match):
    with pytest.raises(WfvizError, match=match):
        reverse_waterfill([1.0, 2.0], **kwargs)


@pytest.mark.parametrize("lam", [[], [[1.0, 2.0]], [1.0, -1.0], [1.0, float("nan")],
                                 [float("inf")]])
def test_bad_eigenvalues(lam):
    with pytest.raises(WfvizError):
        reverse_waterfill(lam, rate=1.0)
    with pytest.raises(WfvizError):
        distortion_rate_curve(lam, [1.0])


def test_curve_rejects_negative_rates():
    with pytest.raises(WfvizError, match=">= 0"):
        distortion_rate_curve([1.0], [-1.0])


def test_rate_beyond_float64_range():
    with pytest.raises(WfvizError, match="float64 range"):
        reverse_waterfill([1.0, 1e-300], rate=2000.0)
    assert reverse_waterfill([1.0, 1e-300], rate=100.0).theta > 0
