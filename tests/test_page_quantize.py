"""Quantize page: the sweep, its theory lines, the per-column view and the table."""

import numpy as np
import pytest
from _apptest import (  # noqa: F401  (no_pages_folder_mode is an autouse fixture)
    SPIKED,
    array,
    figure,
    no_pages_folder_mode,
    start,
    trace,
)

from wfviz.sources import resolve_source
from wfviz.theory import it_distortion

PAGE = "pages/quantize.py"
SMALL = "synthetic:powerlaw?n=48&seed=0&basis=native&alpha=1.5"


def _run(at, **values):
    for key, value in values.items():
        widget = at.multiselect(key=key) if key in ("q_methods", "q_rotations") else \
            at.number_input(key=key)
        widget.set_value(value)
    at.button(key="q_run").click().run()
    assert not at.exception, at.exception
    return at


def test_default_state_asks_for_a_run():
    at = start(src=SMALL, page=PAGE)
    assert any("press **Run**" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_run_draws_measured_points_against_theory():
    at = _run(start(src=SMALL, page=PAGE), q_rows=256, q_rate_lo=3.0, q_rate_hi=5.0, q_points=3)
    rows = at.session_state["q_results"]["rows"]
    assert len(rows) == 2 * 3 * 3  # methods × rotations × rates
    fig = figure(at, "q_dr")
    lam = resolve_source(SMALL).eigenvalues
    it = trace(fig, "IT limit (exact waterfilling)")
    np.testing.assert_allclose(array(it["y"]), it_distortion(lam, array(it["x"])), rtol=1e-9)
    points = [t for t in fig["data"] if t.get("mode") == "markers"]
    assert len(points) == 6 and all(len(array(t["x"])) == 3 for t in points)
    assert "per-column entropy" in fig["layout"]["xaxis"]["title"]["text"]
    gap = figure(at, "q_gap")
    ws = [t for t in gap["data"] if t["name"].startswith("watersic")]
    assert all(np.all(array(t["y"]) > 0) for t in ws)  # never better than the IT limit
    cols = figure(at, "q_cols")
    assert len(array(cols["data"][0]["y"])) == 48
    assert len(at.dataframe) == 1


def test_eigenvalues_only_source_offers_only_basis_free_rotations(tmp_path):
    from _apptest import npy_bytes

    at = start(src=SPIKED, page=PAGE)
    at.sidebar.radio(key="src_kind").set_value("uploaded").run()
    at.sidebar.file_uploader(key="src_upload").set_value(
        ("lam.npy", npy_bytes(np.linspace(1.0, 2.0, 16)), "application/octet-stream")).run()
    assert not at.exception
    assert at.multiselect(key="q_rotations").options == ["Haar random rotation", "eigenbasis (KLT)"]
    assert any("eigenvalues only" in i.value for i in at.info)


def test_empty_selection_is_one_clear_error():
    at = start(src=SMALL, page=PAGE)
    at.multiselect(key="q_methods").set_value([])
    at.button(key="q_run").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Pick at least one method and one rotation, then press Run."]


@pytest.mark.parametrize("metric", ["pooled_entropy"])
def test_metric_is_named_on_the_axis(metric):
    at = start(src=SMALL, page=PAGE)
    at.selectbox(key="q_metric").set_value(metric)
    _run(at, q_rows=128, q_rate_lo=3.0, q_rate_hi=3.0, q_points=1)
    assert "pooled entropy" in figure(at, "q_dr")["layout"]["xaxis"]["title"]["text"]
    assert {r["rate_metric"] for r in at.session_state["q_results"]["rows"]} == {metric}
