import sys
import types

import numpy as np
import pytest

from wfviz.covariance import Covariance
from wfviz.covariance_io import save_covariance
from wfviz.errors import WfvizError
from wfviz.sources import SYNTHETIC_FAMILIES, resolve_source, synthetic

FAMILIES = list(SYNTHETIC_FAMILIES)


def test_every_family_has_a_one_line_description():
    assert set(FAMILIES) == {"powerlaw", "exponential", "wishart", "spiked", "ar1"}
    for text in SYNTHETIC_FAMILIES.values():
        assert text and "\n" not in text and len(text) < 100


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("basis", ["native", "random"])
def test_family_is_a_valid_seeded_covariance(family, basis):
    cov = synthetic(family, 24, seed=3, basis=basis)
    assert cov.n == 24 and cov.matrix.shape == (24, 24)
    np.testing.assert_array_equal(cov.matrix, cov.matrix.T)
    assert np.all(np.diff(cov.eigenvalues) <= 0) and cov.eigenvalues.min() >= 0
    scale = cov.eigenvalues[0]
    np.testing.assert_allclose(np.linalg.eigvalsh(cov.matrix)[::-1], cov.eigenvalues,
                               atol=1e-10 * scale)
    again = synthetic(family, 24, seed=3, basis=basis)
    np.testing.assert_array_equal(again.matrix, cov.matrix)
    assert cov.source_id.startswith(f"synthetic:{family}?n=24&seed=3&basis={basis}")
    assert family in cov.label


@pytest.mark.parametrize("family", FAMILIES)
def test_source_id_resolves_to_the_same_matrix(family):
    cov = synthetic(family, 10, seed=1, basis="random")
    np.testing.assert_array_equal(resolve_source(cov.source_id).matrix, cov.matrix)


@pytest.mark.parametrize("family", ["powerlaw", "exponential", "spiked"])
def test_diagonal_families_are_diagonal_in_native_basis_with_unit_mean(family):
    cov = synthetic(family, 16)
    assert not np.any(cov.matrix - np.diag(np.diag(cov.matrix)))
    assert cov.eigenvalues.mean() == pytest.approx(1.0)
    rotated = synthetic(family, 16, basis="random")
    np.testing.assert_allclose(rotated.eigenvalues, cov.eigenvalues, rtol=1e-12)
    off = rotated.matrix - np.diag(np.diag(rotated.matrix))
    assert np.abs(off).max() > 1e-3 * cov.eigenvalues[0]


def test_powerlaw_and_exponential_spectra():
    lam = synthetic("powerlaw", 8, alpha=2.0).eigenvalues
    np.testing.assert_allclose(lam[:-1] / lam[1:], (np.arange(2, 9) / np.arange(1, 8)) ** 2)
    lam = synthetic("exponential", 100, rate=5.0).eigenvalues
    assert lam[0] / lam[-1] == pytest.approx(np.exp(5.0 * 99 / 100))
    flat = synthetic("powerlaw", 5, alpha=0.0).eigenvalues
    np.testing.assert_allclose(flat, 1.0)


def test_spiked_outliers_are_channels():
    cov = synthetic("spiked", 64, seed=7, n_spikes=3, spike_scale=500.0)
    diag = np.diag(cov.matrix)
    spikes = np.flatnonzero(diag > diag.min())
    assert spikes.size == 3
    assert diag[spikes[0]] / diag.min() == pytest.approx(500.0)
    other = synthetic("spiked", 64, seed=8, n_spikes=3, spike_scale=500.0)
    assert not np.array_equal(np.diag(other.matrix), diag)  # positions follow the seed


def test_wishart_is_the_sample_second_moment_and_rank_deficient_when_few_samples():
    cov = synthetic("wishart", 32, seed=0, samples=8)
    assert np.count_nonzero(cov.eigenvalues > 1e-10) == 8
    assert np.all(cov.eigenvalues >= 0)
    big = synthetic("wishart", 64, seed=0, samples=4096)
    # Marchenko–Pastur edges for n/N = 1/64: (1 ± 1/8)².
    assert 0.7 < big.eigenvalues[-1] and big.eigenvalues[0] < 1.35
    assert synthetic("wishart", 8).source_id.endswith("samples=16")


def test_ar1_is_toeplitz():
    cov = synthetic("ar1", 6, rho=-0.5)
    i, j = np.indices((6, 6))
    np.testing.assert_allclose(cov.matrix, (-0.5) ** np.abs(i - j))


def test_different_seeds_give_different_random_bases():
    a = synthetic("powerlaw", 12, seed=0, basis="random").matrix
    b = synthetic("powerlaw", 12, seed=1, basis="random").matrix
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: synthetic("gauss", 4), "powerlaw, exponential, wishart, spiked, ar1"),
        (lambda: synthetic("powerlaw", 4, basis="eigen"), "native, random"),
        (lambda: synthetic("powerlaw", 0), "between 1 and 16384"),
        (lambda: synthetic("powerlaw", 16385), "between 1 and 16384"),
        (lambda: synthetic("powerlaw", 2.5), "integer"),
        (lambda: synthetic("powerlaw", "8"), "integer"),
        (lambda: synthetic("powerlaw", 4, seed=-1), "seed"),
        (lambda: synthetic("powerlaw", 4, beta=1.0), "parameters are: alpha"),
        (lambda: synthetic("powerlaw", 4, alpha=-1.0), ">= 0"),
        (lambda: synthetic("powerlaw", 4, alpha=float("nan")), "alpha"),
        (lambda: synthetic("wishart", 4, samples=0), "integer >= 1"),
        (lambda: synthetic("wishart", 4, samples=2.5), "integer >= 1"),
        (lambda: synthetic("spiked", 4, n_spikes=5), "between 0 and n"),
        (lambda: synthetic("spiked", 4, spike_scale=0), "> 0"),
        (lambda: synthetic("ar1", 4, rho=1.0), "strictly between -1 and 1"),
        (lambda: synthetic("ar1", 4, rho=True), "rho"),
    ],
)
def test_synthetic_errors(call, match):
    with pytest.raises(WfvizError, match=match):
        call()


def test_spec_defaults_and_numbers():
    cov = resolve_source("synthetic:spiked")
    expected = "synthetic:spiked?n=256&seed=0&basis=native&n_spikes=4&spike_scale=1000.0"
    assert cov.source_id == expected
    cov = resolve_source("  synthetic:ar1?n=5&rho=-0.25&seed=2&basis=random  ")
    assert cov.source_id == "synthetic:ar1?n=5&seed=2&basis=random&rho=-0.25"
    assert resolve_source("synthetic:powerlaw?n=4&alpha=1e-1").source_id.endswith("alpha=0.1")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("synthetic:foo?n=4", "choose one of powerlaw"),
        ("synthetic:powerlaw?n=four", "not a number"),
        ("synthetic:powerlaw?n=4&alpha=x", "alpha='x'"),
        ("synthetic:powerlaw?n=4&alpha", "key=value"),
        ("synthetic:powerlaw?n=4&=3", "key=value"),
        ("synthetic:powerlaw?n=4&n=5", "repeats 'n'"),
        ("synthetic:powerlaw?n=4&rho=0.5", "parameters are: alpha"),
        ("synthetic:powerlaw?n=4&basis=diag", "native, random"),
        ("synthetic:powerlaw?n=4.5", "integer"),
        ("sigma.csv", "not a source"),
        ("", "non-empty"),
        ("missing.npy", "not found"),
        ("bundle:only-name", "bundle:<name>/<block>/<input>"),
        ("bundle:name/x/down", "not an integer"),
        ("bundle:name//down", "bundle:<name>/<block>/<input>"),
    ],
)
def test_spec_errors(spec, match):
    with pytest.raises(WfvizError, match=match):
        resolve_source(spec)


def test_non_string_source():
    with pytest.raises(WfvizError):
        resolve_source(None)


def test_file_source(tmp_path):
    path = save_covariance(tmp_path / "s.npy", np.diag([1.0, 4.0]))
    assert resolve_source(str(path)).eigenvalues.tolist() == [4.0, 1.0]


def test_bundle_source_delegates_to_bundles_module(monkeypatch):
    calls = []

    class FakeBundle:
        def layer(self, block, layer_input):
            calls.append((block, layer_input))
            return Covariance(eigenvalues=np.array([1.0]), label="fake")

    def load_bundle(name):
        if name != "my/model":
            raise FileNotFoundError(name)
        return FakeBundle()

    fake = types.ModuleType("wfviz.bundles")
    fake.load_bundle = load_bundle
    monkeypatch.setitem(sys.modules, "wfviz.bundles", fake)
    assert resolve_source("bundle:my/model/15/down").label == "fake"
    assert calls == [(15, "down")]
    with pytest.raises(WfvizError, match="wfviz bundles"):
        resolve_source("bundle:other/1/qkv")


def test_missing_bundle_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wfviz.bundles", None)  # makes the import fail
    with pytest.raises(WfvizError, match="not available"):
        resolve_source("bundle:any/0/down")


def test_missing_bundle_is_a_wfviz_error():
    with pytest.raises(WfvizError):
        resolve_source("bundle:no-such-bundle-wfviz-test/0/down")
