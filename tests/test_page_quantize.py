"""Quantize page: the sweep, its theory lines, the per-column view and the tables."""

import os
import shutil

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

from wfviz.quantize_layer import sigma_and_rotation_basis
from wfviz.rates import plugin_entropy_bias
from wfviz.rotations import get_rotation
from wfviz.sources import resolve_source
from wfviz.theory import WATERSIC_GAP_BITS, cholesky_diag, it_distortion, watersic_distortion

PAGE = "pages/quantize.py"
SMALL = "synthetic:powerlaw?n=48&seed=0&basis=native&alpha=1.5"
RANDOM_BASIS = "synthetic:powerlaw?n=48&seed=0&basis=random&alpha=1.5"


def _run(at, rotations=None, **values):
    for key, value in values.items():
        widget = at.multiselect(key=key) if key == "q_methods" else at.number_input(key=key)
        widget.set_value(value)
    if rotations is not None:
        at.multiselect(key="q_rotations").set_value(rotations)
    at.button(key="q_run").click().run()
    assert not at.exception, at.exception
    return at


def test_default_state_asks_for_a_run():
    at = start(src=SMALL, page=PAGE)
    assert any("press **Run**" in i.value for i in at.info)
    assert not at.get("plotly_chart")
    # The default demo stays below the rates where 256 codes per column misread the entropy.
    assert at.number_input(key="q_rate_hi").value == 5.0
    assert at.number_input(key="q_points").value == 6


def test_run_draws_measured_points_against_theory():
    at = _run(start(src=SMALL, page=PAGE), q_rows=256, q_rate_lo=3.0, q_rate_hi=5.0, q_points=3)
    rows = at.session_state["q_results"]["rows"]
    assert len(rows) == 2 * 3 * 3  # methods × rotations × rates
    fig = figure(at, "q_dr")
    lam = resolve_source(SMALL).eigenvalues
    it = trace(fig, "IT limit (exact waterfilling)")
    grid = array(it["x"])
    np.testing.assert_allclose(array(it["y"]), it_distortion(lam, grid), rtol=1e-9)
    ws = watersic_distortion(lam, grid)
    np.testing.assert_allclose(array(trace(fig, "WaterSIC (2πe/12)·GM(λ), any basis")["y"]), ws,
                               rtol=1e-9)
    points = [t for t in fig["data"] if t.get("mode") == "markers"]
    assert len(points) == 6 and all(len(array(t["x"])) == 3 for t in points)
    assert all(t["marker"]["symbol"].endswith("-open") for t in points)  # rings show overlaps
    assert "per-column entropy" in fig["layout"]["xaxis"]["title"]["text"]
    gap = figure(at, "q_gap")
    for rot in ("identity", "haar", "hadamard"):
        # The GPTQ-EC lines are the sweep's own prediction (GPTQ's column order), as the table.
        pred = {r["predicted_gap_bits"] for r in rows
                if r["method"] == "gptq-ec" and r["rotation"] == rot}
        assert len(pred) == 1
        (pred,) = pred
        line = trace(gap, f"GPTQ-EC · {rot}: {pred:.3f} bit")
        np.testing.assert_allclose(array(line["y"]), pred, rtol=1e-12)
        dr_line = trace(fig, f"GPTQ-EC · {rot} (AM(d))")
        np.testing.assert_allclose(array(dr_line["y"]),
                                   ws * 2.0 ** (2 * (pred - WATERSIC_GAP_BITS)), rtol=1e-9)
    ws_points = [t for t in gap["data"] if t["name"].startswith("watersic")]
    assert all(np.all(array(t["y"]) > 0) for t in ws_points)  # never better than the IT limit
    table = at.dataframe[0].value  # measured gap per method · rotation and rate
    assert list(table.columns) == ["R = 3", "R = 4", "R = 5", "high-rate theory"]
    for r in rows:
        cell = table.loc[f"{r['method']} · {r['rotation']}", f"R = {r['target_rate']:g}"]
        assert cell == pytest.approx(r["gap_bits"], rel=1e-12)
    full = at.dataframe[1].value
    assert len(full) == len(rows) and list(full.columns)[:4] == [
        "method", "rotation", "target_rate", "rate"]
    cols = figure(at, "q_cols")
    assert len(array(cols["data"][0]["y"])) == 48


def test_column_view_uses_the_rotation_watersic_ran_in():
    """Per-column rates follow ½log2(d_j/GM(d)) of the very Σ WaterSIC factored: with a Haar
    rotation, a d from another Haar sample would scatter them."""
    at = _run(start(src=RANDOM_BASIS, page=PAGE), rotations=["haar", "identity"], q_rows=256,
              q_rate_lo=3.0, q_rate_hi=5.0, q_points=3)
    cov = resolve_source(RANDOM_BASIS)
    S, name = sigma_and_rotation_basis(cov, "haar")
    d = cholesky_diag(get_rotation(name, cov.n, seed=0, sigma=S).apply_sigma(S), damping=1e-4)
    d = d.numpy()
    fig = figure(at, "q_cols")
    measured = trace(fig, "measured: entropy of column j's codes")
    x = array(measured["x"])
    np.testing.assert_allclose(x, 0.5 * (np.log2(d) - np.log2(d).mean()), atol=1e-9)
    y = array(measured["y"])
    assert np.corrcoef(x, y)[0, 1] > 0.95
    assert np.polyfit(x, y, 1)[0] == pytest.approx(1.0, abs=0.15)  # slope 1: R + ½log2(d/GM)
    assert any("haar basis" in c.value for c in at.caption)


def test_plugin_entropy_bias_is_drawn_and_explained():
    at = _run(start(src=SMALL, page=PAGE), q_methods=["watersic"], rotations=["identity"],
              q_rows=64, q_rate_lo=5.0, q_rate_hi=5.0, q_points=1)
    expected = plugin_entropy_bias([5.0], 64)[0]
    assert expected > 0.3  # 64 codes of a 5-bit column: the histogram misses many levels
    assert any(f"about {expected:.2f} bit at 5 bits" in w.value for w in at.warning)
    line = trace(figure(at, "q_gap"), "WaterSIC as read from 64 codes per column")
    x, y = array(line["x"]), array(line["y"])
    np.testing.assert_allclose(y, WATERSIC_GAP_BITS - plugin_entropy_bias(x, 64), rtol=1e-12)


def test_no_bias_warning_with_many_rows_at_low_rate():
    at = _run(start(src=SMALL, page=PAGE), q_methods=["watersic"], rotations=["identity"],
              q_rows=2048, q_rate_lo=2.0, q_rate_hi=2.0, q_points=1)
    assert not at.warning
    names = [t["name"] for t in figure(at, "q_gap")["data"]]
    assert not any("codes per column" in n for n in names)
    assert not any(n.startswith("GPTQ-EC") for n in names)  # no GPTQ-family method ran


def test_plugin_entropy_bias_shrinks_with_rows():
    b = plugin_entropy_bias([4.0], 256)[0]
    assert 4 * plugin_entropy_bias([4.0], 1024)[0] == pytest.approx(b, rel=0.3)  # ∝ 1/rows


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
    assert not at.warning  # the plug-in bias warning is about per-column entropy only


def test_png_export_of_the_dr_chart():
    at = _run(start(src=SMALL, page=PAGE), q_methods=["watersic"], rotations=["identity"],
              q_rows=128, q_rate_lo=3.0, q_rate_hi=3.0, q_points=1)
    at.button(key="q_png_prepare").click().run()
    assert not at.exception, at.exception
    buttons = [b for b in at.get("download_button") if b.proto.id.endswith("-q_png")]
    errors = [e.value for e in at.error]
    if shutil.which("chromium") or os.environ.get("CI"):  # make test installs Debian's chromium
        assert [b.proto.label for b in buttons] == ["Download PNG"] and not errors
    else:  # kaleido renders through a Chrome; without one the page says so in one sentence
        assert not buttons and errors == [
            "PNG export needs kaleido and a Chrome/Chromium (e.g. Debian's chromium); install "
            "one, or use the camera icon of the chart."]


def test_a_cancelled_run_shows_the_points_that_finished():
    """Cancel reruns the page while the sweep is running; the rows it had finished by then are
    in the session's partial entry, and the rerun shows them, labelled as cancelled."""
    at = _run(start(src=SMALL, page=PAGE), q_rows=256, q_rate_lo=2.0, q_rate_hi=3.0, q_points=2)
    done = at.session_state["q_results"]
    partial = dict(done, rows=done["rows"][:2], cancelled=True)
    at.session_state["q_partial"] = partial
    at.session_state["q_results"] = None
    at.run()
    assert not at.exception
    assert "q_partial" not in at.session_state
    assert any("cancelled: 2 of 12 points" in w.value for w in at.warning)
    points = [t for t in figure(at, "q_dr")["data"] if t.get("mode") == "markers"]
    assert sum(len(array(t["x"])) for t in points) == 2


def test_a_failed_run_is_not_shown_as_a_cancelled_one():
    """16 rows cannot measure 5 bits of per-column entropy: one error, and the rerun shows no
    stale partial results labelled as cancelled."""
    at = start(src=SMALL, page=PAGE)
    at.number_input(key="q_rows").set_value(16)
    at.button(key="q_run").click().run()
    assert not at.exception and len(at.error) == 1 and "more rows" in at.error[0].value
    at.run()
    assert "q_partial" not in at.session_state
    assert "q_results" not in at.session_state or not at.session_state["q_results"]
    assert not any("cancelled" in w.value for w in at.warning)


def _elements(node, kind):
    for child in getattr(node, "children", {}).values():
        if type(child).__name__ == kind:
            yield child
        yield from _elements(child, kind)


def test_a_finished_run_reports_its_time_and_drops_its_cancel_button():
    import re

    at = _run(start(src=SMALL, page=PAGE), q_rows=128, q_rate_lo=3.0, q_rate_hi=3.0,
              q_points=1)
    (status,) = _elements(at.main, "Status")
    assert re.fullmatch(r"Done: 6 points in \d+\.\d s", status.label), status.label
    assert not [b for b in at.button if b.key == "q_cancel"]
