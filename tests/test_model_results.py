"""Reading grid results, the whole-model figures, and the background point jobs of the app."""

import json

import pytest

from tests._tiny_llm import (  # noqa: F401
    one_torch_thread,
    save_tiny_model,
    write_text,
    write_tiny_grid,
)
from wfviz.errors import WfvizError
from wfviz.model_jobs import (
    PointRequest,
    active_points,
    finished_point,
    model_unavailable_reason,
    point_dir,
    running_point,
    start_point,
)
from wfviz.model_results import (
    GRID_DIR,
    KINDS,
    curves,
    kind_summary,
    layer_matrix,
    load_results,
    measured_near,
    shipped_results,
)
from wfviz.plots.model import layer_heatmap_figure, model_curve_figure, model_label


@pytest.fixture(scope="module")
def grid(model_dir, text, tmp_path_factory):
    return write_tiny_grid(tmp_path_factory.mktemp("grid"), model_dir, text)


def test_load_results_reads_rows_layers_and_spans(grid):
    res = load_results(grid)
    assert load_results(grid / "results.json").points == res.points
    assert res.reference["kind"] == "reference" and res.reference["ppl"] > 1
    assert {p["id"] for p in res.points} == {"gptq_identity_3b_one-shot",
                                             "gptq_identity_4b_one-shot",
                                             "watersic_identity_3b_one-shot"}
    layers = res.layers("gptq_identity_3b_one-shot")
    assert len(layers) == 14 and {r["kind"] for r in layers} == set(KINDS)
    assert res.spans_text().startswith("calibration tokens 0–256 and evaluation tokens 256–512")
    with pytest.raises(WfvizError, match="No point 'nope'"):
        res.point("nope")


def test_curves_never_mix_metrics_and_sort_by_rate(grid):
    res = load_results(grid)
    got = {(c["method"], c["rate_metric"]): c for c in curves(res)}
    assert set(got) == {("gptq", "log_cardinality"), ("watersic", "column_entropy")}
    gptq = got[("gptq", "log_cardinality")]
    assert gptq["rates"] == sorted(gptq["rates"]) and len(gptq["rates"]) == 2
    # more bits, less damage (a tiny random model still obeys this between 3 and 4 bits)
    assert gptq["values"][1] < gptq["values"][0]
    assert [c["values"] for c in curves(res, "kl")][0][0] > 0
    with pytest.raises(WfvizError, match="Unknown value"):
        curves(res, "accuracy")


def test_layer_matrix_and_kind_summary(grid):
    layers = load_results(grid).layers("watersic_identity_3b_one-shot")
    blocks, kinds, matrix = layer_matrix(layers, "relative_distortion")
    assert blocks == [0, 1] and kinds == list(KINDS)
    assert all(0 < v < 1 for row in matrix for v in row)
    summary = {s["kind"]: s for s in kind_summary(layers)}
    assert summary["down_proj"]["layers"] == 2
    assert sum(s["weights"] for s in summary.values()) == sum(r["a"] * r["n"] for r in layers)
    with pytest.raises(WfvizError, match="no column 'nope'"):
        layer_matrix(layers, "nope")


def test_figures_label_metrics_reference_and_model(grid):
    res = load_results(grid)
    fig = model_curve_figure(res, "ppl", highlight="gptq_identity_3b_one-shot")
    names = [t.name for t in fig.data]
    # two metrics in one chart: each trace sits in its metric's legend group
    groups = {t.name: t.legendgrouptitle.text for t in fig.data if t.legendgroup}
    assert groups["gptq · identity"] == "bits counted as log-cardinality"
    assert groups["watersic · identity"] == "bits counted as per-column entropy"
    assert "reference model" in names and "chosen point" in names
    ref = next(t for t in fig.data if t.name == "reference model")
    assert set(ref.y) == {res.reference["ppl"]}
    assert "log-cardinality" in fig.layout.xaxis.title.text
    assert "per-column entropy" in fig.layout.xaxis.title.text
    kl = model_curve_figure(res, "kl")
    assert "reference model" not in [t.name for t in kl.data]
    heat = layer_heatmap_figure(res.layers("gptq_identity_4b_one-shot"), "rate")
    assert heat.data[0].z.shape == (2, 7) and list(heat.data[0].x)[-1] == "down"
    assert model_label(res) == res.provenance["model"]["label"]  # not a GGUF: unchanged


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"), ("{not json", "Cannot read"), ("[1, 2]", "expected a JSON object"),
    ('{"format": "other", "points": []}', "not a wfviz whole-model results file")])
def test_bad_results_files_give_one_sentence(tmp_path, content, match):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    with pytest.raises(WfvizError, match=match):
        load_results(tmp_path)


def test_missing_point_file_is_one_sentence(grid, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(grid, copy)
    (copy / "points" / "gptq_identity_3b_one-shot.json").unlink()
    with pytest.raises(WfvizError, match="does not exist"):
        load_results(copy).layers("gptq_identity_3b_one-shot")


def test_shipped_results_found_beside_a_bundle(tmp_path, monkeypatch, grid):
    import shutil

    from tests._apptest import write_toy_bundle

    root = tmp_path / "data"
    bundle = write_toy_bundle(root).parent
    shutil.copytree(grid, bundle / GRID_DIR)
    monkeypatch.setattr("wfviz.bundles.bundle_dirs", lambda: [root])
    assert shipped_results().points == load_results(grid).points
    shutil.rmtree(bundle / GRID_DIR)
    assert shipped_results() is None


def test_point_job_runs_once_caches_and_is_found_by_every_session(model_dir, text, tmp_path):
    req = PointRequest("gptq", "identity", 4.0, calib_tokens=256, eval_tokens=256,
                       seq_len=128, text=str(text), model=str(model_dir))
    cache = tmp_path / "cache"
    assert finished_point(req, cache) is None
    run = start_point(req, cache_dir=cache)
    assert start_point(req, cache_dir=cache) is run  # a second session attaches to the same job
    assert run.wait(120) and run.status().error is None, run.status().error
    assert run.status().fraction == 1.0
    done = finished_point(req, cache)
    assert done.point(req.point_id)["ppl"] > 1
    assert done.path == point_dir(req, cache)
    assert running_point(req) in (run, None) and running_point(req) is None
    assert all(r != req for r, _ in active_points())


def test_point_job_cancel_leaves_no_result(model_dir, text, tmp_path):
    req = PointRequest("watersic", "identity", 3.0, calib_tokens=256, eval_tokens=256,
                       seq_len=128, text=str(text), model=str(model_dir))
    cache = tmp_path / "cache"
    run = start_point(req, cache_dir=cache)
    run.cancel()
    assert run.wait(120) and run.status().cancelled
    assert finished_point(req, cache) is None


def test_point_requests_with_bad_input(tmp_path, model_dir):
    missing = PointRequest("gptq", "identity", 4.0, text=str(tmp_path / "none.txt"),
                           model=str(model_dir))
    assert "does not exist" in model_unavailable_reason(missing)
    with pytest.raises(WfvizError, match="does not exist"):
        start_point(missing, cache_dir=tmp_path)
    assert "Choose the text file" in model_unavailable_reason(
        PointRequest("gptq", "identity", 4.0, model=str(model_dir)))
    text = write_text(tmp_path / "t.txt", 1200)
    bad = PointRequest("gptq", "identity", 2.5, calib_tokens=256, eval_tokens=256, seq_len=128,
                       text=str(text), model=str(model_dir))
    run = start_point(bad, cache_dir=tmp_path / "cache")
    assert run.wait(60)
    assert isinstance(run.status().error, WfvizError)
    assert "whole bits" in str(run.status().error)
    assert not (point_dir(bad, tmp_path / "cache") / "results.json").exists()


def test_results_files_are_json_only(grid):
    # the reader never unpickles: every file it opens is JSON text
    for path in [grid / "results.json", *sorted((grid / "points").iterdir())]:
        json.loads(path.read_text(encoding="utf-8"))


def test_measured_near_keeps_the_budget_method_and_rotation(grid):
    res = load_results(grid)
    # the tiny layers' rows are short, so the scales cost about 0.25 bit per weight
    assert measured_near(res, "gptq", "identity", 3.0) == []
    near = measured_near(res, "gptq", "identity", 3.0, tol=0.3)
    assert [m["id"] for m in near] == ["gptq_identity_3b_one-shot"]
    assert near[0]["dnll"] == pytest.approx(res.point(near[0]["id"])["nll"]
                                            - res.reference["nll"])
    assert measured_near(res, "gptq", "hadamard", 3.0) == []
    assert measured_near(res, "watersic", "identity", 5.0) == []


def test_broken_models_are_left_off_the_perplexity_axis():
    from pathlib import Path

    from wfviz.model_results import ModelResults
    from wfviz.plots.model import PPL_CAP

    rows = [dict(id=f"p{r}", method="gptq", rotation="identity", calibration="one-shot",
                 rate_metric="log_cardinality", rate_label="x", rate=r, ppl=v, kl=1.0)
            for r, v in ((2.0, 1e9), (3.0, 200.0), (4.0, 30.0))]
    fig = model_curve_figure(ModelResults(Path("."), {}, {"ppl": 20.0}, rows))
    lo, hi = fig.layout.yaxis.range
    assert hi == pytest.approx(__import__("math").log10(PPL_CAP * 20.0))
    assert 10 ** lo <= 20.0  # the reference line stays in view
    assert "1 point above perplexity 1,000 off the chart" in fig.layout.annotations[0].text
    rows[0]["ppl"] = 100.0
    fig = model_curve_figure(ModelResults(Path("."), {}, {"ppl": 20.0}, rows))
    assert not fig.layout.annotations
