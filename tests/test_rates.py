import numpy as np
import pytest
import torch

from wfviz.errors import WfvizError
from wfviz.rates import (
    RATE_METRICS,
    coded_bits,
    column_entropy_bits,
    measure_rate,
    pooled_entropy_bits,
    rate_axis_label,
)


def test_entropy_exact_values():
    codes = np.array([[0, 0, 7], [1, 1, 7], [0, 2, 7], [1, 3, 7]])
    np.testing.assert_allclose(column_entropy_bits(codes), [1.0, 2.0, 0.0])
    assert pooled_entropy_bits(np.array([[3, 4], [3, 4]])) == pytest.approx(1.0)


def test_entropy_matches_direct_histogram():
    rng = np.random.default_rng(1)
    codes = np.round(rng.standard_normal((500, 7)) * rng.uniform(0.5, 20, 7)).astype(int)
    for j in range(7):
        _, counts = np.unique(codes[:, j], return_counts=True)
        p = counts / 500
        assert column_entropy_bits(codes)[j] == pytest.approx(-(p * np.log2(p)).sum())


def test_pooled_exceeds_column_entropy_for_mixed_scales():
    rng = np.random.default_rng(2)
    codes = np.round(rng.standard_normal((4000, 2)) * [1.0, 30.0]).astype(int)
    assert pooled_entropy_bits(codes) > column_entropy_bits(codes).mean() + 0.3


def test_coded_bits_round_trip_and_overhead():
    rng = np.random.default_rng(3)
    codes = np.round(rng.standard_normal((50_000, 2)) * 3).astype(int)
    size = coded_bits(codes)
    entropy_bits = column_entropy_bits(codes).sum() * 50_000
    assert entropy_bits <= size.payload_bits < entropy_bits * 1.01 + 64
    assert size.total_bits == pytest.approx(size.payload_bits + size.table_bits)
    pooled = coded_bits(codes, per_column=False)
    assert pooled.column_bits.shape == (2,)


def test_coded_bits_constant_column():
    size = coded_bits(np.zeros((100, 1), dtype=int))
    assert size.payload_bits <= 32  # one symbol: essentially nothing to send


def test_measure_rate_side_info_and_metrics():
    codes = np.array([[0, 5], [1, 5], [0, 5], [1, 5]])
    rate, cols = measure_rate(codes, "column_entropy", side_info_bits=16.0)
    assert rate == pytest.approx(0.5 + 2.0)
    np.testing.assert_allclose(cols, [3.0, 2.0])
    rate, _ = measure_rate(codes, "pooled_entropy")
    assert rate == pytest.approx(pooled_entropy_bits(codes))
    rate, cols = measure_rate(codes, "log_cardinality", levels=16)
    assert rate == 4.0 and np.all(cols == 4.0)
    coded, _ = measure_rate(codes, "coded_bits")
    assert coded > 0.5  # payload plus two code tables


def test_torch_codes_accepted():
    codes = torch.tensor([[0, 1], [1, 1]])
    np.testing.assert_allclose(column_entropy_bits(codes), [1.0, 0.0])


def test_bad_metric_and_missing_levels():
    with pytest.raises(WfvizError, match="column_entropy"):
        measure_rate(np.zeros((2, 2), int), "bits")
    with pytest.raises(WfvizError, match="levels"):
        measure_rate(np.zeros((2, 2), int), "log_cardinality")
    with pytest.raises(WfvizError):
        rate_axis_label("nope")


@pytest.mark.parametrize("codes", [np.array([[0.5, 1.0]]), np.zeros((0, 3)), np.zeros((2, 2, 2))])
def test_bad_codes_rejected(codes):
    with pytest.raises(WfvizError, match="Codes must"):
        column_entropy_bits(codes)


def test_axis_labels_name_every_metric():
    labels = {rate_axis_label(m) for m in RATE_METRICS}
    assert len(labels) == len(RATE_METRICS)
    assert all("bits/weight" in label for label in labels)


def test_wide_alphabet_uses_sort_path_with_same_result():
    rng = np.random.default_rng(4)
    codes = np.round(rng.standard_normal((300, 3)) * 4).astype(np.int64)
    wide = codes.copy()
    wide[0, 0] += 10**9  # forces the sort-based counting
    np.testing.assert_allclose(column_entropy_bits(wide), column_entropy_bits(codes) + [
        column_entropy_bits(wide)[0] - column_entropy_bits(codes)[0], 0, 0])
    _, counts = np.unique(wide[:, 0], return_counts=True)
    p = counts / 300
    assert column_entropy_bits(wide)[0] == pytest.approx(-(p * np.log2(p)).sum())


def test_rounded_gaussian_entropy_matches_exact_sums_and_the_high_rate_formula():
    from wfviz.rates import _rounded_gaussian_entropy_exact, rounded_gaussian_entropy

    ratios = np.array([0.05, 0.3, 1.0, 3.0, 10.0])
    exact = np.array([_rounded_gaussian_entropy_exact(r) for r in ratios])
    np.testing.assert_allclose(rounded_gaussian_entropy(ratios), exact, atol=1e-3)
    high = rounded_gaussian_entropy([100.0, 1e4])
    np.testing.assert_allclose(high, np.log2([100.0, 1e4]) + 0.5 * np.log2(2 * np.pi * np.e))
    assert rounded_gaussian_entropy([1e-9])[0] == 0.0
    assert np.all(np.diff(rounded_gaussian_entropy(np.logspace(-1, 3, 50))) > 0)


def test_plugin_entropy_bias_shrinks_as_one_over_rows_once_levels_are_few():
    from wfviz.rates import plugin_entropy_bias

    b256, b1024, b4096 = (plugin_entropy_bias([5.0], n)[0] for n in (256, 1024, 4096))
    assert 0.05 < b256 < 0.3 and b4096 < b1024 < b256
    assert 3.0 < b1024 / b4096 < 5.0  # Miller–Madow: (K − 1)/(2 N ln 2) while K ≪ N


@pytest.mark.parametrize("h", [0.5, 2.0, 5.0])
def test_step_model_predicts_the_plugin_entropy_of_rounded_gaussian_columns(h):
    from wfviz.rates import column_entropy_bits, log2_step_for_entropy

    rng = np.random.default_rng(0)
    log2_sigma = rng.uniform(-1.0, 1.0, 400)
    X = rng.standard_normal((256, 400)) * 2.0**log2_sigma
    for rows, tol in ((256, 0.02), (None, None)):
        u = log2_step_for_entropy(log2_sigma, [h], rows)[0]
        measured = column_entropy_bits(np.rint(X / 2.0**u).astype(np.int64)).mean()
        if rows is not None:
            assert measured == pytest.approx(h, abs=tol)
        else:  # the exact-entropy model asks for a coarser step: 256 codes read it low
            assert measured < h + 0.005


@pytest.mark.parametrize("h", [1.0, 3.0, 6.0])
def test_pooled_step_model_predicts_one_histogram_over_columns_of_mixed_scales(h):
    from wfviz.rates import log2_step_for_entropy, pooled_entropy_bits

    rng = np.random.default_rng(1)
    log2_sigma = rng.uniform(-2.0, 2.0, 300)
    X = rng.standard_normal((2000, 300)) * 2.0**log2_sigma
    u = log2_step_for_entropy(log2_sigma, [h], pooled=True)[0]
    measured = pooled_entropy_bits(np.rint(X / 2.0**u).astype(np.int64))
    assert measured == pytest.approx(h, abs=0.02)
    per_column = log2_step_for_entropy(log2_sigma, [h])[0]
    assert u > per_column + 0.05  # the mixture of scales costs more than the columns' mean
