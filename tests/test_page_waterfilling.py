"""Waterfilling page: the water level, the R-or-D control, the D(R) curve, the Cholesky panel."""

import numpy as np
import pytest
from _apptest import (  # noqa: F401  (no_pages_folder_mode is an autouse fixture)
    SPIKED,
    array,
    figure,
    metric,
    no_pages_folder_mode,
    npy_bytes,
    start,
    trace,
)

from wfviz.sources import resolve_source
from wfviz.stats import rotated_d
from wfviz.theory import gptq_gap_bits
from wfviz.waterfilling import reverse_waterfill

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

PAGE = "pages/waterfilling.py"


def _theta(fig: dict) -> float:
    shape = fig["layout"]["shapes"][0]
    assert shape["y0"] == shape["y1"]
    return shape["y0"]


def test_rate_slider_sets_the_water_level():
    at = start(src=SPIKED, page=PAGE)
    at.slider(key="wf_rate").set_value(3.0).run()
    fig = figure(at, "wf_vessel")
    lam = array(trace(fig, "σ²λ_i")["y"])
    assert lam.size == 256 and fig["data"][0]["type"] == "bar"
    theta = _theta(fig)
    rates = np.maximum(0.0, 0.5 * np.log2(lam / theta))
    assert rates.mean() == pytest.approx(3.0, rel=1e-9)
    np.testing.assert_allclose(array(trace(fig, "water D_i")["y"]), np.minimum(lam, theta))
    assert metric(at, "rate R") == "3.000 bits"


def test_distortion_slider_water_level_matches_target():
    at = start(src=SPIKED, page=PAGE)
    at.radio(key="wf_mode").set_value("distortion D").run()
    at.select_slider(key="wf_rel_d").set_value(0.001).run()
    lam = resolve_source(SPIKED).eigenvalues
    theta = _theta(figure(at, "wf_vessel"))
    assert np.minimum(theta, lam).mean() == pytest.approx(0.001 * lam.mean(), rel=1e-9)
    curve = figure(at, "wf_curve")
    d_of_r = trace(curve, "D(R), waterfilling")
    assert array(d_of_r["x"]).size == 161
    point = trace(curve, "current (R, D)")
    assert array(point["y"])[0] == pytest.approx(0.001 * lam.mean(), rel=1e-9)


def test_zero_rate_coordinates_are_counted():
    at = start(src=SPIKED, page=PAGE)
    at.slider(key="wf_rate").set_value(0.05).run()
    lam = resolve_source(SPIKED).eigenvalues
    zero = int(np.sum(reverse_waterfill(lam, rate=0.05).rates == 0))
    assert zero == 252  # only the four spikes stick out of the water at 0.05 bit
    assert metric(at, "zero-rate coordinates") == f"{zero} of 256"


def _upload_spectrum(at, lam):
    at.radio(key="src_kind").set_value("uploaded").run()
    at.file_uploader(key="src_upload").set_value(("lam.npy", npy_bytes(lam), "x")).run()
    assert not at.exception


def test_large_n_is_drawn_as_thinned_steps():
    at = start(src=SPIKED, page=PAGE)
    _upload_spectrum(at, np.geomspace(100.0, 0.01, 3000))
    fig = figure(at, "wf_vessel")
    assert fig["data"][0]["type"] == "scatter"
    assert array(trace(fig, "σ²λ_i")["y"]).size == 2000
    assert any("step areas" in c.value for c in at.caption)


def test_cholesky_panel_gap_per_rotation():
    src = "synthetic:spiked?n=64&seed=0&basis=native&n_spikes=4&spike_scale=1000.0"
    at = start(src=src, page=PAGE)
    cov = resolve_source(src)
    options = at.selectbox(key="wf_rotation").options
    assert len(options) == 5
    at.selectbox(key="wf_rotation").set_value("hadamard").run()
    expected = gptq_gap_bits(rotated_d(cov, "hadamard"))
    assert metric(at, "predicted gap GPTQ − WaterSIC") == f"{expected:.3f} bits"
    rates = array(trace(figure(at, "wf_col_rates"), "WaterSIC R_j")["y"])
    assert rates.mean() == pytest.approx(1.0, rel=1e-9)  # same mean rate as GPTQ (default R)


def test_eigenvalues_only_source_offers_only_basis_free_rotations():
    at = start(src=SPIKED, page=PAGE)
    _upload_spectrum(at, np.geomspace(10.0, 0.1, 30))
    assert sorted(at.selectbox(key="wf_rotation").options) == ["Haar random rotation",
                                                              "eigenbasis (KLT)"]
    assert any("Unavailable for this source" in c.value for c in at.caption)


def test_large_d_is_drawn_as_dots_under_its_level_lines():
    at = start(src=SPIKED, page=PAGE)
    fig = figure(at, "wf_d")
    d = rotated_d(resolve_source(SPIKED), "identity")
    dots = trace(fig, "d_j")
    assert dots["mode"] == "markers"  # 256 noisy values: a line would hide AM and GM
    np.testing.assert_allclose(array(dots["y"]), d)
    np.testing.assert_allclose(array(trace(fig, "AM(d)")["y"]), d.mean())
    np.testing.assert_allclose(array(trace(fig, "GM(d)")["y"]), np.exp(np.log(d).mean()))
    rates = trace(figure(at, "wf_col_rates"), "WaterSIC R_j")
    assert rates["mode"] == "markers"


def test_haar_gap_is_shown_as_mean_and_spread_never_one_draw():
    from wfviz.stats import haar_gap

    at = start(src=SPIKED, page=PAGE)
    at.selectbox(key="wf_rotation").set_value("haar").run()
    assert not at.exception
    h = haar_gap(resolve_source(SPIKED))
    assert metric(at, "predicted gap GPTQ − WaterSIC") == f"{h['mean']:.3f} ± {h['std']:.3f} bits"
    assert metric(at, "AM(d)/GM(d)") == f"{2 ** (2 * h['mean']):.4g}"
