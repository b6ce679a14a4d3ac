"""Covariance page: summary metrics, gap table, spectrum, diagonal and heatmap figures."""

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
from wfviz.theory import gptq_gap_bits

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

PAGE = "pages/covariance.py"


def test_spiked_source_metrics_figures_and_outliers():
    at = start(src=SPIKED, page=PAGE)
    cov = resolve_source(SPIKED)
    assert metric(at, "n (input features)") == "256"
    assert metric(at, "condition number") == "1e+03"
    spectrum = array(trace(figure(at, "cov_spectrum"), "λ_i")["y"])
    np.testing.assert_allclose(spectrum, cov.eigenvalues)
    marked = array(trace(figure(at, "cov_diagonal"), "top outlier channels")["x"])
    spikes = np.flatnonzero(np.diag(cov.matrix) > 10)
    assert sorted(marked.astype(int)) == sorted(spikes)
    caption = next(c.value for c in at.caption if c.value.startswith("Top outlier channels"))
    assert all(str(j) in caption for j in spikes)
    gaps = at.dataframe[0].value
    identity = gaps.loc[gaps["basis"].str.startswith("identity"), gaps.columns[1]].item()
    assert identity == pytest.approx(gptq_gap_bits(np.diag(cov.matrix)), rel=1e-9)


def test_heatmap_is_block_averaged_for_large_n():
    at = start(src="synthetic:ar1?n=600&seed=0&basis=native&rho=0.9", page=PAGE)
    z = array(figure(at, "cov_heatmap")["data"][0]["z"])
    assert z.shape == (200, 200)  # 600 / ceil(600 / 256) = 200 blocks of 3 × 3
    assert z[0, 0] == pytest.approx(np.log10(np.mean(0.9 ** np.abs(np.subtract.outer(
        np.arange(3), np.arange(3))))))


def test_flat_diagonal_reports_no_outliers():
    at = start(src="synthetic:ar1?n=64&seed=0&basis=native&rho=0.5", page=PAGE)
    assert any("No channel reaches" in c.value for c in at.caption)
    assert metric(at, "dead features") == "0"


def test_eigenvalues_only_upload_disables_the_heatmap():
    at = start(src=SPIKED, page=PAGE)
    at.radio(key="src_kind").set_value("uploaded").run()
    at.file_uploader(key="src_upload").set_value(
        ("lam.npy", npy_bytes(np.geomspace(100.0, 0.01, 50)), "x")).run()
    assert not at.exception
    assert metric(at, "condition number") == "1e+04"
    assert any("The heatmap needs the full Σ_X matrix" in i.value for i in at.info)
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert any(k.endswith("cov_spectrum") for k in keys)
    assert not any(k.endswith("cov_heatmap") for k in keys)
    gaps = at.dataframe[0].value.set_index("basis").iloc[:, 0]
    assert np.isnan(gaps["identity (native channels)"])  # needs the full matrix
    assert gaps["eigenbasis (KLT)"] == pytest.approx(
        gptq_gap_bits(np.geomspace(100.0, 0.01, 50)))


def test_correlation_heatmap_and_legible_outlier_labels():
    src = "synthetic:ar1?n=64&seed=0&basis=native&rho=0.9"
    at = start(src=src, page=PAGE)
    corr = figure(at, "cov_corr")["data"][0]
    z = array(corr["z"])
    rho = 0.9 ** np.abs(np.subtract.outer(np.arange(64), np.arange(64)))
    np.testing.assert_allclose(z, rho, rtol=1e-9)  # unit diagonal: Σ is its own correlation
    off = z[~np.eye(64, dtype=bool)]
    assert corr["zmin"] == 0 and corr["zmax"] == pytest.approx(np.percentile(off, 99))


def test_close_outlier_labels_go_on_both_sides():
    from wfviz.plots import diagonal_figure

    diag = np.ones(1536)
    diag[[402, 514, 541, 1254, 1300]] = [25.8, 19.8, 20.0, 54.4, 20.5]
    marks = trace(diagonal_figure(diag).to_plotly_json(), "top outlier channels")
    where = dict(zip(array(marks["x"]).astype(int), marks["textposition"], strict=True))
    assert where[514] != where[541] and where[1254] != where[1300]
    assert where[402] == "top center"


def test_haar_prediction_is_the_mean_over_rotations_with_its_spread():
    from wfviz.stats import haar_gap

    at = start(src=SPIKED, page=PAGE)
    gaps = at.dataframe[0].value
    row = gaps.loc[gaps["basis"].str.startswith("Haar")].iloc[0]
    h = haar_gap(resolve_source(SPIKED))
    assert row["predicted gap (bits per weight)"] == pytest.approx(h["mean"], rel=1e-12)
    assert row["± sd"] == f"± {h['std']:.3f}" and h["std"] > 0
    assert f"over {h['seeds']} random rotations" in row["note"]
    assert gaps.loc[gaps["basis"].str.startswith("identity"), "± sd"].item() == ""
