import json
import math

import numpy as np
import pytest

from wfviz.covariance import Covariance
from wfviz.covariance_io import validate_covariance
from wfviz.errors import WfvizError
from wfviz.sources import synthetic
from wfviz.stats import (
    effective_rank,
    haar_d,
    json_safe,
    layer_stats,
    rotated_d,
    stats_table,
)
from wfviz.theory import cholesky_diag, gptq_gap_bits
from wfviz.validation import count_dead as dead_features

ROTATION_NAMES = ("identity", "haar", "hadamard", "eigenbasis", "act_order")
KEYS = {"label", "source_id", "n", "trace", "lambda_max", "lambda_min", "condition_number",
        "effective_rank", "numerical_rank", "dead_features", "log2_gm_eigenvalue",
        "am_gm_eigenvalue", "gap_bits", "haar_gap", "damping", "seed", "notes"}


def spectrum_only(cov):
    return Covariance(eigenvalues=cov.eigenvalues, label="spectrum")


def test_keys_and_spectrum_values():
    lam = np.array([4.0, 2.0, 1.0, 0.5])
    cov = validate_covariance(np.diag(lam), label="diag")
    s = layer_stats(cov)
    assert set(s) == KEYS
    assert s["n"] == 4 and s["trace"] == 7.5
    assert (s["lambda_max"], s["lambda_min"], s["condition_number"]) == (4.0, 0.5, 8.0)
    assert s["log2_gm_eigenvalue"] == pytest.approx(np.mean(np.log2(lam)))
    assert s["am_gm_eigenvalue"] == pytest.approx(lam.mean() / 2 ** np.mean(np.log2(lam)))
    assert s["dead_features"] == 0 and s["numerical_rank"] == 4
    assert set(s["gap_bits"]) == set(ROTATION_NAMES)


def test_diagonal_sigma_gap_is_am_gm_of_eigenvalues_for_unrotated_bases():
    lam = np.array([9.0, 3.0, 1.0, 1.0, 0.1])
    s = layer_stats(validate_covariance(np.diag(lam)))
    expected = 0.5 * math.log2(lam.mean() / np.exp(np.mean(np.log(lam))))
    for rotation in ("identity", "eigenbasis", "act_order"):
        assert s["gap_bits"][rotation] == pytest.approx(expected, rel=1e-9)
    assert 0 <= s["gap_bits"]["haar"] < expected


def test_rotations_shrink_the_gap_of_outlier_channels():
    gaps = layer_stats(synthetic("spiked", 256, seed=1, n_spikes=2, spike_scale=1e4))["gap_bits"]
    assert gaps["identity"] > 1.0
    assert gaps["hadamard"] < 0.5 * gaps["identity"]
    assert gaps["haar"] < 0.5 * gaps["identity"]


@pytest.mark.parametrize("rotation", ROTATION_NAMES)
def test_determinant_is_kept_by_every_rotation(rotation):
    cov = synthetic("ar1", 64, rho=0.8, basis="random", seed=2)
    d = rotated_d(cov, rotation)
    assert d.shape == (64,)
    assert np.sum(np.log(d)) == pytest.approx(np.sum(np.log(cov.eigenvalues)), rel=1e-8)


def test_identity_is_plain_cholesky_and_eigenbasis_is_the_spectrum():
    cov = synthetic("wishart", 32, seed=4)
    np.testing.assert_allclose(rotated_d(cov, "identity"), cholesky_diag(cov.matrix))
    np.testing.assert_array_equal(rotated_d(cov, "eigenbasis"), cov.eigenvalues)
    damped = rotated_d(cov, "eigenbasis", damping=0.1)
    np.testing.assert_allclose(damped, cov.eigenvalues + 0.1 * cov.eigenvalues.mean())


def test_act_order_differs_from_identity_on_unsorted_correlated_sigma():
    cov = synthetic("powerlaw", 48, basis="random", seed=5)
    assert not np.allclose(rotated_d(cov, "act_order"), rotated_d(cov, "identity"))


def test_eigenvalues_only_source():
    full = synthetic("exponential", 40, rate=6.0)  # diagonal with sorted diag = diag(λ)
    s = layer_stats(spectrum_only(full))
    for rotation in ("identity", "hadamard", "act_order"):
        assert s["gap_bits"][rotation] is None
        assert any(rotation in note and "full Σ_X matrix" in note for note in s["notes"])
    assert s["dead_features"] is None
    assert s["gap_bits"]["eigenbasis"] == pytest.approx(gptq_gap_bits(full.eigenvalues))
    np.testing.assert_array_equal(rotated_d(spectrum_only(full), "haar", seed=3),
                                  rotated_d(full, "haar", seed=3))
    with pytest.raises(WfvizError, match="full Σ_X matrix"):
        rotated_d(spectrum_only(full), "hadamard")


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_haar_d_is_the_cholesky_diagonal_of_an_explicit_haar_rotation(damping):
    lam = synthetic("powerlaw", 30, alpha=1.5).eigenvalues
    q, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((30, 30)))
    explicit = cholesky_diag(q.T @ np.diag(lam) @ q, damping=damping)
    np.testing.assert_allclose(haar_d(lam, seed=7, damping=damping), explicit, rtol=1e-9)


def test_precomputed_d_is_used_without_a_matrix():
    d = np.array([2.0, 1.0, 0.5])
    dg = np.array([1.0, 1.0, 1.0])  # GPTQ's order: another d with the same product
    cov = Covariance(eigenvalues=np.array([2.5, 0.8, 0.5]), d_by_rotation={"identity": d},
                     d_gptq_by_rotation={"identity": dg}, diagonal=np.array([2.0, 1.2, 0.6]))
    np.testing.assert_array_equal(rotated_d(cov, "identity"), d)
    np.testing.assert_array_equal(rotated_d(cov, "identity", order="gptq"), dg)
    s = layer_stats(cov)
    assert s["gap_bits"]["identity"] == 0.0  # the predicted gap is GPTQ's
    assert s["dead_features"] == 0
    with pytest.raises(WfvizError, match="damping"):
        rotated_d(cov, "identity", damping=0.01)
    assert layer_stats(cov, damping=0.01)["gap_bits"]["identity"] is None


def test_format_1_layer_without_gptq_order_says_to_regenerate():
    cov = Covariance(eigenvalues=np.array([2.5, 0.8, 0.5]),
                     d_by_rotation={"identity": np.array([2.0, 1.0, 0.5])}, label="old layer")
    with pytest.raises(WfvizError, match="regenerate its bundle"):
        rotated_d(cov, "identity", order="gptq")
    s = layer_stats(cov)
    assert s["gap_bits"]["identity"] is None
    assert any("regenerate" in note for note in s["notes"])


def test_predicted_gap_uses_gptq_column_order():
    """Σ whose natural and reversed Cholesky diagonals differ: the gap follows GPTQ's order."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((6, 400)) * np.array([10.0, 1, 1, 1, 1, 0.1])[:, None]
    X[1] += 3 * X[0]
    sigma = X @ X.T / 400
    s = layer_stats(validate_covariance(sigma))
    natural = gptq_gap_bits(cholesky_diag(sigma))
    gptq = gptq_gap_bits(cholesky_diag(sigma, order="gptq"))
    assert abs(natural - gptq) > 0.05
    assert s["gap_bits"]["identity"] == pytest.approx(gptq, rel=1e-9)


def test_singular_matrix_gives_inf_condition_and_damping_note():
    sigma = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    cov = Covariance(eigenvalues=np.array([2.0, 1.0, 0.0]), matrix=sigma)
    s = layer_stats(cov)
    assert s["condition_number"] == math.inf and s["lambda_min"] == 0.0
    assert s["log2_gm_eigenvalue"] == -math.inf and s["am_gm_eigenvalue"] == math.inf
    # singular but no dead channel: the Cholesky is retried with more damping, and says so;
    # the eigenbasis prediction uses the live spectrum (the null space costs no bits)
    assert np.isfinite(s["gap_bits"]["identity"])
    assert s["gap_bits"]["eigenbasis"] == pytest.approx(gptq_gap_bits(np.array([2.0, 1.0])))
    assert any("identity" in note and "damping" in note for note in s["notes"])
    damped = layer_stats(cov, damping=0.01)["gap_bits"]
    assert all(np.isfinite(damped[r]) for r in ("identity", "eigenbasis", "act_order"))
    text = json.dumps(json_safe(s), allow_nan=False)
    assert json.loads(text)["condition_number"] is None


def test_dead_features_and_effective_rank():
    assert dead_features([1.0, 1.0, 1.0, 1e-4, 0.0]) == 2
    assert dead_features(None) is None
    assert dead_features(np.zeros(3)) == 3
    assert effective_rank(np.ones(7)) == pytest.approx(7.0)
    assert effective_rank([5.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert effective_rank(np.zeros(3)) == 0.0
    cov = validate_covariance(np.diag([1.0, 1.0, 1.0, 1e-5]))
    assert layer_stats(cov)["dead_features"] == 1


@pytest.mark.parametrize("damping", [-0.1, float("nan"), "0.1"])
def test_bad_damping(damping):
    cov = synthetic("powerlaw", 4)
    with pytest.raises(WfvizError, match="Damping"):
        layer_stats(cov, damping=damping)
    with pytest.raises(WfvizError, match="Damping"):
        rotated_d(cov, "eigenbasis", damping=damping)


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_bad_haar_seed(seed):
    with pytest.raises(WfvizError, match="seed"):
        haar_d([1.0, 2.0], seed=seed)


def test_unknown_rotation():
    with pytest.raises(WfvizError, match="identity"):
        rotated_d(synthetic("powerlaw", 4), "givens")


def test_seed_changes_random_rotations_only():
    cov = synthetic("spiked", 64, seed=1)
    a, b = layer_stats(cov, seed=0)["gap_bits"], layer_stats(cov, seed=1)["gap_bits"]
    assert a["haar"] != b["haar"]
    assert a["identity"] == b["identity"] and a["eigenbasis"] == b["eigenbasis"]


def test_json_safe_and_table():
    assert json_safe({"x": [np.float32(1.5), -math.inf, math.nan], "y": np.int64(3)}) == {
        "x": [1.5, None, None], "y": 3}
    s = layer_stats(spectrum_only(synthetic("powerlaw", 16)))
    text = stats_table(s)
    assert "effective rank" in text and "n/a" in text and "notes:" in text
    lines = text.splitlines()
    value_columns = {line.index(line.split()[-1]) for line in lines[1:9]}
    assert len(value_columns) == 1  # values aligned in one column
