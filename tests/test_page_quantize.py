"""Quantize page: checks before a run, the sweep and its theory lines, real weights, the
per-column view, tables, exports and a run that is followed, cancelled or fails."""

import importlib.util
import re

import numpy as np
import pytest
from _apptest import (  # noqa: F401  (no_pages_folder_mode is an autouse fixture)
    SPIKED,
    array,
    figure,
    no_pages_folder_mode,
    npy_bytes,
    start,
    trace,
)

from wfviz.errors import WfvizError
from wfviz.quantize_layer import sigma_and_rotation_basis
from wfviz.rates import plugin_entropy_bias
from wfviz.rotations import get_rotation
from wfviz.sources import resolve_source
from wfviz.theory import WATERSIC_GAP_BITS, cholesky_diag, it_distortion, watersic_distortion

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

PAGE = "pages/quantize.py"
SMALL = "synthetic:powerlaw?n=48&seed=0&basis=native&alpha=1.5"
RANDOM_BASIS = "synthetic:powerlaw?n=48&seed=0&basis=random&alpha=1.5"
LAYER = "bundle:smollm2-135m-wikitext2/15/down"
REAL = "bundle:smollm2-135m-wikitext2/0/o"


def _gguf_installed() -> bool:
    from wfviz.weights import gguf_path

    if importlib.util.find_spec("gguf") is None:
        return False
    try:
        gguf_path()
    except WfvizError:
        return False
    return True


def _set(at, rotations=None, **values):
    for key, value in values.items():
        if key == "q_methods":
            at.multiselect(key=key).set_value(value)
        elif key in ("q_metric", "q_damping", "q_device"):
            at.selectbox(key=key).set_value(value)
        elif key == "q_weights":
            at.radio(key=key).set_value(value)
        else:
            at.number_input(key=key).set_value(value)
    if rotations is not None:
        at.multiselect(key="q_rotations").set_value(rotations)
    return at.run()


def _run(at, rotations=None, timeout=120, **values):
    _set(at, rotations, **values)
    assert not at.error, [e.value for e in at.error]
    at.button(key="q_run").click().run(timeout=timeout)
    assert not at.exception, at.exception
    return at


def _elements(node, kind):
    for child in getattr(node, "children", {}).values():
        if type(child).__name__ == kind:
            yield child
        yield from _elements(child, kind)


def _status(at) -> str:
    (status,) = _elements(at.main, "Status")
    return status.label


def test_default_state_shows_the_plan_and_asks_for_a_run():
    at = start(src=SMALL, page=PAGE)
    assert any("press **run**" in i.value.lower() for i in at.info)
    assert not at.get("plotly_chart") and not at.error
    # The default demo: 2 to 7 bits in 6 rates at 256 rows, counted by parametric_coded
    assert (at.number_input(key="q_rate_lo").value, at.number_input(key="q_rate_hi").value,
            at.number_input(key="q_points").value) == (2.0, 7.0, 6)
    assert at.number_input(key="q_rows").value == 256
    assert at.selectbox(key="q_metric").value == "parametric_coded"
    assert at.radio(key="q_weights").value == "gaussian"
    plan = " ".join(c.value for c in at.caption)
    assert "36 points: gptq-ec, watersic at 2, 3, 4, 5, 6, 7 bits; × 3 rotations" in plan
    assert not at.button(key="q_run").disabled


def test_run_draws_measured_points_against_theory():
    at = _run(start(src=SMALL, page=PAGE), q_rows=256, q_rate_lo=3.0, q_rate_hi=5.0,
              q_points=3)
    rows = at.session_state["q_results"]["rows"]
    assert len(rows) == 2 * 3 * 3  # methods × rotations × rates
    assert re.fullmatch(r"Done: 18 points in \d+\.\d s", _status(at))
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
    # the D–R chart keeps the full rate, side information included
    ec_identity = trace(fig, "gptq-ec · identity")
    np.testing.assert_allclose(array(ec_identity["x"]), [
        r["rate"] for r in rows if r["method"] == "gptq-ec" and r["rotation"] == "identity"])
    assert "parametric" in fig["layout"]["xaxis"]["title"]["text"]
    gap = figure(at, "q_gap")
    assert "payload rate = rate − side information" in gap["layout"]["xaxis"]["title"]["text"]
    for rot in ("identity", "haar", "hadamard"):
        pred = {r["predicted_gap_bits"] for r in rows
                if r["method"] == "gptq-ec" and r["rotation"] == rot}
        assert len(pred) == 1
        (pred,) = pred
        line = trace(gap, f"GPTQ-EC · {rot}: {pred:.3f} bit")
        np.testing.assert_allclose(array(line["y"]), pred, rtol=1e-12)
        dr_line = trace(fig, f"GPTQ-EC · {rot} (AM(d))")
        np.testing.assert_allclose(array(dr_line["y"]),
                                   ws * 2.0 ** (2 * (pred - WATERSIC_GAP_BITS)), rtol=1e-9)
        # like with like: the gap at the payload rate, drawn at the payload rate
        mine = [r for r in rows if r["method"] == "watersic" and r["rotation"] == rot]
        pts = trace(gap, f"watersic · {rot}")
        np.testing.assert_allclose(array(pts["x"]), [r["rate"] - r["side_bits"] for r in mine])
        np.testing.assert_allclose(array(pts["y"]), [r["payload_gap_bits"] for r in mine])
        assert all(r["side_bits"] > 0 for r in mine)
    ws_points = [t for t in gap["data"] if t["name"].startswith("watersic")]
    assert all(np.all(array(t["y"]) > 0) for t in ws_points)  # never better than the IT limit
    assert any("side information" in m.value and "watersic 0.1" in m.value for m in at.markdown)
    table = at.dataframe[0].value  # the payload gap per method · rotation and rate
    assert list(table.columns) == ["R = 3", "R = 4", "R = 5", "high-rate theory"]
    for r in rows:
        cell = table.loc[f"{r['method']} · {r['rotation']}", f"R = {r['target_rate']:g}"]
        assert cell == pytest.approx(r["payload_gap_bits"], rel=1e-12)
    full = at.dataframe[1].value
    assert len(full) == len(rows) and list(full.columns)[:4] == [
        "method", "rotation", "target_rate", "rate"]
    cols = figure(at, "q_cols")
    assert len(array(cols["data"][0]["y"])) == 48
    assert not [b for b in at.button if b.key == "q_cancel"]  # the run is over
    assert not any("press **run**" in i.value.lower() for i in at.info)


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
    # the Haar prediction on the page is the mean ± sd over random rotations as well
    from wfviz.stats import haar_gap

    h = haar_gap(cov)
    assert any(f"{h['mean']:.3f} ± {h['std']:.3f} bit" in m.value for m in at.markdown)


def test_damping_in_the_advanced_settings_reaches_the_sweep():
    at = _run(start(src=SMALL, page=PAGE), q_methods=["watersic"], rotations=["identity"],
              q_rows=256, q_rate_lo=4.0, q_rate_hi=4.0, q_points=1, q_damping=0.1)
    result = at.session_state["q_results"]
    assert result["settings"]["damping"] == 0.1
    (kept,) = result["columns"].values()
    np.testing.assert_allclose(kept["d"], cholesky_diag(resolve_source(SMALL).matrix,
                                                        damping=0.1), rtol=1e-6)


def test_plugin_entropy_bias_is_drawn_and_explained():
    at = _run(start(src=SMALL, page=PAGE), q_methods=["watersic"], rotations=["identity"],
              q_metric="column_entropy", q_rows=64, q_rate_lo=5.0, q_rate_hi=5.0, q_points=1)
    expected = plugin_entropy_bias([5.0], 64)[0]
    assert expected > 0.3  # 64 codes of a 5-bit column: the histogram misses many levels
    assert any(f"about {expected:.2f} bit at 5 bits" in w.value for w in at.warning)
    line = trace(figure(at, "q_gap"), "WaterSIC as read from 64 codes per column")
    x, y = array(line["x"]), array(line["y"])
    np.testing.assert_allclose(y, WATERSIC_GAP_BITS - plugin_entropy_bias(x, 64), rtol=1e-12)


def test_no_bias_warning_by_default_nor_with_many_rows():
    at = _run(start(src=SMALL, page=PAGE), q_methods=["watersic"], rotations=["identity"],
              q_metric="column_entropy", q_rows=2048, q_rate_lo=2.0, q_rate_hi=2.0, q_points=1)
    assert not at.warning
    names = [t["name"] for t in figure(at, "q_gap")["data"]]
    assert not any("codes per column" in n for n in names)
    assert not any(n.startswith("GPTQ-EC") for n in names)  # no GPTQ-family method ran


def test_eigenvalues_only_upload_narrows_the_rotations_and_a_full_source_restores_them():
    at = start(src=SPIKED, page=PAGE)
    assert at.multiselect(key="q_rotations").value == ["identity", "haar", "hadamard"]
    at.sidebar.radio(key="src_kind").set_value("uploaded").run()
    at.sidebar.file_uploader(key="src_upload").set_value(
        ("lam.npy", npy_bytes(np.linspace(1.0, 2.0, 16)), "application/octet-stream")).run()
    assert not at.exception
    assert at.multiselect(key="q_rotations").options == ["Haar random rotation", "eigenbasis (KLT)"]
    assert at.multiselect(key="q_rotations").value == ["haar"]
    assert any("eigenvalues only" in i.value for i in at.info)
    at.sidebar.radio(key="src_kind").set_value("synthetic").run()
    assert not at.exception and at.session_state["wfviz_source"].startswith("synthetic:")
    assert at.multiselect(key="q_rotations").value == ["identity", "haar", "hadamard"]
    assert len(at.multiselect(key="q_rotations").options) == 5


def test_every_problem_shows_next_to_the_run_button_before_running():
    at = _set(start(src=SMALL, page=PAGE), q_methods=[], rotations=[])
    assert [e.value for e in at.error] == ["Pick at least one method.",
                                           "Pick at least one rotation."]
    assert at.button(key="q_run").disabled
    assert not any("press **run**" in i.value.lower() for i in at.info)
    at = _set(start(src=SMALL, page=PAGE), q_methods=["watersic", "gptq"],
              q_metric="log_cardinality", q_rate_lo=4.0, q_rate_hi=3.0)
    errors = [e.value for e in at.error]
    assert any("highest rate (3) is below the lowest (4)" in e for e in errors)
    assert any("cannot be log_cardinality" in e for e in errors)
    # few rows cannot measure high rates by histogram: refused before any work
    at = _set(start(src=SMALL, page=PAGE), q_metric="column_entropy", q_rows=16)
    assert len(at.error) == 1 and "cannot be measured on 16 rows" in at.error[0].value
    assert at.button(key="q_run").disabled


def test_grid_methods_run_whole_bits_and_the_page_says_so():
    at = _set(start(src=SMALL, page=PAGE), q_methods=["watersic", "gptq"], rotations=["identity"],
              q_rate_lo=2.0, q_rate_hi=3.0, q_points=3, q_rows=128)
    captions = " ".join(c.value for c in at.caption)
    assert "5 points: watersic at 2, 2.5, 3 bits; gptq at 2, 3 bits" in captions
    assert "gptq uses a grid of 2^b levels, so it runs whole bits only: 2, 3" in captions
    assert not at.error
    at.button(key="q_run").click().run(timeout=120)
    assert not at.exception and not at.error
    rows = at.session_state["q_results"]["rows"]
    assert sorted((r["method"], r["target_rate"]) for r in rows) == [
        ("gptq", 2.0), ("gptq", 3.0), ("watersic", 2.0), ("watersic", 2.5), ("watersic", 3.0)]


def test_a_failed_run_is_one_error_where_the_eye_is(monkeypatch):
    import wfviz.experiments

    def broken(*args, **kwargs):
        raise WfvizError("Σ is broken; pick another source.")
        yield

    monkeypatch.setattr(wfviz.experiments, "iter_sweep", broken)
    at = start(src=SMALL, page=PAGE)
    at.button(key="q_run").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Σ is broken; pick another source."]
    assert _status(at) == "Stopped"
    assert "q_results" not in at.session_state
    assert not any("Cancelled" in w.value for w in at.warning)
    assert not any("press **run**" in i.value.lower() for i in at.info)  # no stale box


@pytest.mark.parametrize("metric", ["pooled_entropy"])
def test_metric_is_named_on_the_axis(metric):
    at = _run(start(src=SMALL, page=PAGE), q_metric=metric, q_rows=128, q_rate_lo=3.0,
              q_rate_hi=3.0, q_points=1)
    assert "pooled entropy" in figure(at, "q_dr")["layout"]["xaxis"]["title"]["text"]
    assert {r["rate_metric"] for r in at.session_state["q_results"]["rows"]} == {metric}
    assert not at.warning  # the plug-in bias warning is about per-column entropy only


def test_csv_header_and_png_title_name_what_was_measured(monkeypatch):
    import plotly.graph_objects as go

    import pages._quantize_results as results

    headers, titles = [], []
    csv = results.table_to_csv
    monkeypatch.setattr(results, "table_to_csv",
                        lambda rows, header=None: headers.append(header) or csv(rows,
                                                                                header=header))
    monkeypatch.setattr(go.Figure, "to_image",
                        lambda self, **kw: titles.append(self.layout.title.text) or b"png")
    at = _run(start(src=SMALL, page=PAGE), q_methods=["watersic"], rotations=["identity"],
              q_rows=128, q_rate_lo=3.0, q_rate_hi=3.0, q_points=1, q_seed=7)
    assert headers[-1] == {"source": SMALL, "layer": resolve_source(SMALL).label,
                           "weights": "i.i.d. Gaussian rows N(0, 1), the theory's model",
                           "rows": 128, "seed": 7, "rate_metric": "parametric_coded",
                           "damping": "default"}
    assert csv(at.session_state["q_results"]["rows"], header=headers[-1]).startswith(
        f"# source: {SMALL}\n")
    at.button(key="q_png_prepare").click().run()
    assert not at.exception and not at.error
    assert resolve_source(SMALL).label in titles[-1] and "128 rows" in titles[-1]
    assert [b.proto.label for b in at.get("download_button")
            if b.proto.id.endswith("-q_png")] == ["Download PNG"]


def test_a_cancelled_run_keeps_its_points_and_says_how_many():
    """The page follows a run from session state; once it is cancelled, the points it had
    finished become the results at once, labelled with how many of all were kept."""
    import time

    from wfviz.background import BackgroundRun
    from wfviz.experiments import sweep

    at = start(src=SMALL, page=PAGE)
    points = sweep(resolve_source(SMALL).matrix, methods="watersic", rotations="identity",
                   rates=[2, 3], rows=128, rate_metric="parametric_coded", keep_columns=True)

    def job(cancel, progress):
        yield from points
        while not cancel():  # a long sweep, still going when Cancel is pressed
            time.sleep(0.01)
        raise AssertionError("unreachable")

    run = BackgroundRun(job, total=12, heavy=False).start()
    while run.status().done < 2:
        time.sleep(0.01)
    run.cancel()
    settings = dict(methods=("watersic",), rotations=("identity",), rates=(2.0, 3.0), rows=128,
                    seed=0, device="auto", rate_metric="parametric_coded", damping=None,
                    weights="gaussian", weights_label="Gaussian", variance=1.0)
    at.session_state["q_run_state"] = dict(run=run, source=SMALL, label="x", settings=settings,
                                           notices=[])
    at.run()
    assert not at.exception
    assert _status(at) == "Cancelled: 2 of 12 points kept"
    assert any("Cancelled: 2 of 12 points kept" in w.value for w in at.warning)
    assert "q_run_state" not in at.session_state
    marks = [t for t in figure(at, "q_dr")["data"] if t.get("mode") == "markers"]
    assert sum(len(array(t["x"])) for t in marks) == 2


def test_real_weights_need_a_full_bundle_block():
    at = _set(start(src=SMALL, page=PAGE), q_weights="real")
    (error,) = at.error
    assert "Real weights exist only for the bundled SmolLM2-135M layers" in error.value
    assert at.button(key="q_run").disabled


def test_real_weights_without_the_gguf_say_how_to_install(monkeypatch):
    import wfviz.weights

    monkeypatch.setattr(wfviz.weights, "GGUF_PACKAGE", "no_such_package_for_wfviz")
    at = _set(start(src=REAL, page=PAGE), q_weights="real")
    (error,) = at.error
    assert error.value.count(". ") == 0 and wfviz.weights.INSTALL_HINT in error.value
    assert at.button(key="q_run").disabled


@pytest.mark.skipif(not _gguf_installed(), reason="the SmolLM2 GGUF is not installed")
def test_real_weights_are_quantized_against_their_own_layer():
    at = _set(start(src=REAL, page=PAGE), q_weights="real", q_methods=["watersic"],
              rotations=["identity"], q_rate_lo=4.0, q_rate_hi=4.0, q_points=1)
    assert not at.error
    assert any(m.label == "Rows of W" and m.value == "576" for m in at.metric)
    at.button(key="q_run").click().run(timeout=300)
    assert not at.exception and not at.error
    result = at.session_state["q_results"]
    assert result["settings"]["weights"] == "real" and result["settings"]["rows"] == 576
    assert "Q4_1 GGUF, dequantized" in result["settings"]["weights_label"]
    assert any("Q4_1 GGUF, dequantized" in c.value for c in at.caption)
    (row,) = result["rows"]
    assert row["prediction"] == "high-rate theory, these weights' entropy powers"
    line = trace(figure(at, "q_gap"), "watersic · identity: predicted for these weights")
    assert array(line["y"])[0] == pytest.approx(row["predicted_gap_bits"])


@pytest.mark.slow
def test_default_demo_on_the_default_layer_sits_on_the_theory_lines():
    """The app's default run (the shipped layer, 2 methods × 3 rotations × 2..7 bits, 256
    rows, parametric_coded): at the two top rates WaterSIC's payload gap is within 0.03 bit of
    0.2546 in every rotation and GPTQ-EC's within 0.04 bit of its prediction."""
    at = start(src=LAYER, page=PAGE)
    at.button(key="q_run").click().run(timeout=900)
    assert not at.exception and not at.error
    rows = at.session_state["q_results"]["rows"]
    assert len(rows) == 36
    for r in (r for r in rows if r["target_rate"] >= 6):
        target = WATERSIC_GAP_BITS if r["method"] == "watersic" else r["predicted_gap_bits"]
        tol = 0.03 if r["method"] == "watersic" else 0.04
        assert abs(r["payload_gap_bits"] - target) < tol, r
