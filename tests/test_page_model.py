"""AppTest of the Model page: shipped curves, a point's heatmaps, running a point, no model."""

import functools

import pytest
import streamlit as st

from tests._apptest import figure, no_pages_folder_mode, start, trace  # noqa: F401
from tests._tiny_llm import one_torch_thread, tiny_model_page  # noqa: F401
from wfviz.model_results import load_results

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

PAGE = "pages/model.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_page(tmp_path_factory.mktemp("model-page"))


@pytest.fixture
def results(tiny, monkeypatch):
    """The page shows the tiny grid as if it were the shipped one."""
    res = load_results(tiny["grid"])
    monkeypatch.setattr("wfviz.model_results.shipped_results", lambda: res)
    st.cache_data.clear()
    yield res
    st.cache_data.clear()


def test_curves_table_and_heatmaps(results):
    at = start(page=PAGE)
    fig = figure(at, "m_curve")
    names = [t["name"] for t in fig["data"]]
    assert "reference model" in names and "gptq · identity" in names
    assert trace(fig, "gptq · identity")["legendgrouptitle"]["text"] == (
        "bits counted as log-cardinality")
    assert "chosen point" in names  # the selected point is ringed
    assert "log-cardinality" in fig["layout"]["xaxis"]["title"]["text"]
    assert trace(fig, "reference model")["y"][0] == pytest.approx(results.reference["ppl"])
    for value in ("relative_distortion", "rate", "predicted_gap_bits"):
        heat = figure(at, f"m_heat_{value}")
        assert heat["data"][0]["type"] == "heatmap"
    assert at.selectbox(key="m_point").value == "gptq_identity_3b_one-shot"
    at.selectbox(key="m_point").set_value("watersic_identity_3b_one-shot").run()
    assert not at.exception
    rates = figure(at, "m_heat_rate")["data"][0]["customdata"]
    point = results.point("watersic_identity_3b_one-shot")
    assert any(float(v) != pytest.approx(3.0, abs=1e-9) for row in rates for v in row)
    assert point["rate"] == pytest.approx(3.0, abs=0.05)  # watersic hits its measured target
    at.radio(key="m_value").set_value("KL from the reference").run()
    assert not at.exception
    assert "reference model" not in [t["name"] for t in figure(at, "m_curve")["data"]]
    assert any("Only the decoder blocks' linear layers" in c.value for c in at.caption)


def test_without_results_or_model_the_page_says_why(monkeypatch):
    monkeypatch.setattr("wfviz.model_results.shipped_results", lambda: None)
    monkeypatch.setattr("wfviz.model_jobs.model_unavailable_reason",
                        lambda request=None: "Runs need the gguf package; install it with: X")
    st.cache_data.clear()
    at = start(page=PAGE)
    text = " ".join(i.value for i in at.info)
    assert "No whole-model results are installed" in text
    assert "Runs need the model on this machine" in text and "install it with" in text
    assert not at.button  or "m_run" not in [b.key for b in at.button]
    st.cache_data.clear()


def _gptq4_form(at, text):
    """Fill the Run-this-point form: gptq at 4 bits, 2048 + 2048 tokens of ``text``."""
    at.selectbox(key="m_method").set_value("gptq").run()
    at.number_input(key="m_rate").set_value(4.0)
    at.number_input(key="m_ctok").set_value(2048)
    at.number_input(key="m_etok").set_value(2048)
    return at.text_input(key="m_text").set_value(str(text)).run()


def test_run_this_point_then_every_session_sees_it(results, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WFVIZ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("wfviz.model_jobs.PointRequest", functools.partial(
        __import__("wfviz.model_jobs", fromlist=["PointRequest"]).PointRequest,
        model=str(tiny["model"]), seq_len=128))
    monkeypatch.setattr("wfviz.model_jobs.model_unavailable_reason", lambda request=None: None)
    at = _gptq4_form(start(page=PAGE), tiny["text"])
    assert not at.exception and not at.error
    at.button(key="m_run").click().run(timeout=120)
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric]
    assert "Perplexity" in labels and "KL (nats/token)" in labels
    # a new session (another tab) with the same settings gets the cached result, no run
    again = _gptq4_form(start(page=PAGE), tiny["text"])
    assert [m.value for m in again.metric] == [m.value for m in at.metric]
    assert not [b for b in again.button if b.key == "m_run"]


def test_bad_text_path_is_an_error_under_the_form(results, monkeypatch):
    monkeypatch.setattr("wfviz.model_jobs.model_unavailable_reason",
                        __import__("wfviz.model_jobs", fromlist=["x"]).model_unavailable_reason)
    at = start(page=PAGE)
    if any("Runs need the model" in i.value for i in at.info):
        pytest.skip("the SmolLM2 GGUF is not installed")
    at.text_input(key="m_text").set_value("/no/such/wiki.test.raw").run()
    assert any("does not exist" in e.value for e in at.error)
    assert at.button(key="m_run").disabled
