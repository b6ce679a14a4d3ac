"""AppTest of the Model page's allocation section: the slider moves the plan, the exports, no
stored inputs, and a plan run on a tiny Llama through the background job."""

import functools
import json

import pytest
import streamlit as st

from tests._apptest import array, figure, metric, no_pages_folder_mode, start, trace  # noqa: F401
from tests._tiny_llm import one_torch_thread, tiny_model_page  # noqa: F401
from wfviz.allocation import COSTS_FILE, RatePlan, load_costs
from wfviz.model_results import load_results

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

PAGE = "pages/model.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model, its text, a grid on it and its stored costs, made by the CLI."""
    from wfviz.cli import main

    root = tmp_path_factory.mktemp("model-alloc-page")
    made = tiny_model_page(root)
    model_dir, text = made["model"], made["text"]
    costs = root / COSTS_FILE
    mp = pytest.MonkeyPatch()
    mp.setenv("WFVIZ_CACHE_DIR", str(root / "cache"))
    try:
        assert main(["allocate", "--model", str(model_dir), "--text", str(text),
                     "--calib-tokens", "256", "--seq-len", "128", "--device", "cpu",
                     "--budget", "3", "--sensitivity", "fisher", "--out", str(root / "p.json"),
                     "--save-costs", str(costs)]) == 0
    finally:
        mp.undo()
    return dict(made, costs=load_costs(costs))


@pytest.fixture
def shipped(tiny, monkeypatch):
    """The page shows the tiny grid and the tiny model's costs as if they were shipped."""
    res = load_results(tiny["grid"])
    monkeypatch.setattr("wfviz.model_results.shipped_results", lambda: res)
    monkeypatch.setattr("wfviz.allocation.shipped_costs", lambda: tiny["costs"])
    st.cache_data.clear()
    yield res
    st.cache_data.clear()


@pytest.fixture
def downloads(monkeypatch):
    """The bytes handed to each download button, by file name."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    files = {}
    real = MemoryMediaFileStorage.load_and_get_id

    def record(self, data, mimetype, kind, filename=None):
        files[filename] = data
        return real(self, data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return files


def water(at):
    return array(trace(figure(at, "a_vessel"), "s·D (water)")["y"])


def test_the_slider_changes_the_plan_and_the_metrics(shipped):
    at = start(page=PAGE)
    assert at.slider(key="a_budget").value == 3.0
    sens = at.selectbox(key="a_sens")
    assert sens.options == ["none (s = 1, layer MSE)", "fisher"] and sens.value == "fisher"
    before = {m.label: m.value for m in at.metric}
    assert "Predicted ΔNLL, waterfilled" in before and "Water level θ (s·D)" in before
    w_before, bars = water(at), figure(at, "a_bars")
    assert bars["layout"]["shapes"][0]["y0"] == 3.0
    assert figure(at, "a_heat")["data"][0]["type"] == "heatmap"
    at.slider(key="a_budget").set_value(2.0).run()
    assert not at.exception, at.exception
    after = {m.label: m.value for m in at.metric}
    assert after["Water level θ (s·D)"] != before["Water level θ (s·D)"]
    assert float(after["Predicted ΔNLL, waterfilled"]) > float(
        before["Predicted ΔNLL, waterfilled"])
    assert figure(at, "a_bars")["layout"]["shapes"][0]["y0"] == 2.0
    assert water(at).max() > w_before.max()  # less budget, higher water
    # waterfilling never predicts worse than uniform under its own cost model
    assert float(after["Predicted ΔNLL, waterfilled"]) <= float(
        after["Predicted ΔNLL, uniform"]) + 1e-9
    # the sensitivity moves bits; with s = 1 the sum is not called a ΔNLL
    rates_fisher = {t["name"]: list(array(t["y"])) for t in figure(at, "a_bars")["data"]}
    at.selectbox(key="a_sens").set_value("none").run()
    rates_none = {t["name"]: list(array(t["y"])) for t in figure(at, "a_bars")["data"]}
    assert rates_none != rates_fisher
    assert "Predicted Σ m·D (s = 1), waterfilled" in [m.label for m in at.metric]
    # the measured watersic point at 3 bits of the shipped grid, labelled as measured
    at.slider(key="a_budget").set_value(3.0).run()
    measured = at.dataframe[-1].value
    assert "measured ΔNLL (nats/token)" in measured.columns
    assert list(measured["plan"]) == ["uniform"]
    ref = shipped.reference["nll"]
    row = shipped.point("watersic_identity_3b_one-shot")
    assert measured["measured ΔNLL (nats/token)"].iloc[0] == pytest.approx(row["nll"] - ref)


def test_exports_in_three_formats(shipped, downloads):
    at = start(page=PAGE)
    assert len(at.get("download_button")) == 3
    names = sorted(downloads)
    assert names == ["plan-watersic-3.00b-gptqmodel.json", "plan-watersic-3.00b.args",
                     "plan-watersic-3.00b.json"]
    plan = RatePlan.from_json(downloads["plan-watersic-3.00b.json"].decode())
    assert plan.budget == 3.0 and abs(plan.average - 3.0) < 1e-3 and len(plan.rates) == 14
    assert plan.model_fingerprint == shipped.provenance["model_fingerprint"]
    args = downloads["plan-watersic-3.00b.args"].decode().splitlines()
    assert len(args) == 14 and all(a.startswith("--tensor-type ^blk\\.") for a in args)
    dynamic = json.loads(downloads["plan-watersic-3.00b-gptqmodel.json"])
    assert len(dynamic) == 14 and all(v["bits"] in (2, 3, 4, 8) for v in dynamic.values())


def test_without_stored_costs_one_info(shipped, monkeypatch):
    monkeypatch.setattr("wfviz.allocation.shipped_costs", lambda: None)
    st.cache_data.clear()
    at = start(page=PAGE)
    infos = [i.value for i in at.info if "allocation inputs" in i.value]
    assert len(infos) == 1 and "--save-costs" in infos[0]
    assert not [s for s in at.slider if s.key == "a_budget"]


def test_run_this_plan_on_the_tiny_model(shipped, tiny, tmp_path, monkeypatch):
    import wfviz.model_jobs as jobs

    monkeypatch.setenv("WFVIZ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(jobs, "PointRequest", functools.partial(
        jobs.PointRequest, model=str(tiny["model"]), seq_len=128))
    monkeypatch.setattr(jobs, "model_unavailable_reason", lambda request=None: None)
    at = start(page=PAGE)
    at.slider(key="a_budget").set_value(2.5).run()
    at.number_input(key="a_etok").set_value(256)
    at.text_input(key="a_text").set_value(str(tiny["text"])).run()
    assert not at.exception and not at.error, at.error
    at.button(key="a_run").click().run(timeout=180)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    rate = float(metric(at, "Measured bits/weight"))
    assert rate == pytest.approx(2.5, abs=0.15)  # the plan's budget, measured
    assert float(metric(at, "Measured perplexity (this plan)")) > 1
    # the plan was written into the job's folder and ran as a plan point
    (folder,) = (tmp_path / "cache" / "model-points").iterdir()
    plan = RatePlan.from_json((folder / jobs.PLAN_FILE).read_text())
    assert plan.budget == 2.5
    row = load_results(folder).points[0]
    assert row["plan"] == jobs.PLAN_FILE and row["id"].startswith("watersic_identity_plan-")
    # another session with the same settings reads the cached result: no button
    again = start(page=PAGE)
    again.slider(key="a_budget").set_value(2.5).run()
    again.number_input(key="a_etok").set_value(256)
    again.text_input(key="a_text").set_value(str(tiny["text"])).run()
    assert not [b for b in again.button if b.key == "a_run"]
    assert metric(again, "Measured bits/weight") == metric(at, "Measured bits/weight")
