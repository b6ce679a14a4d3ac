"""Layer statistics page: the per-layer table of a bundle, heatmaps, warnings, the paper's claim,
sending a layer to the other pages, and a set of uploaded files."""

import numpy as np
import pytest
from _apptest import (  # noqa: F401  (fixtures: no_pages_folder_mode is autouse, spiked_default)
    array,
    figure,
    no_pages_folder_mode,
    npy_bytes,
    spiked_default,
    start,
    write_toy_bundle,
)

from wfviz.bundles import load_bundle
from wfviz.theory import gptq_gap_bits

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

PAGE = "pages/layer_stats.py"


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A toy bundle with 12 tokens: fewer than n, so every layer is flagged as singular."""
    write_toy_bundle(tmp_path, tokens=12)
    monkeypatch.setenv("WFVIZ_DATA", str(tmp_path))
    return load_bundle("toy")


def _open_toy(at):
    at.selectbox(key="ls_bundle").set_value("toy").run()
    assert not at.exception
    return at.dataframe[0].value


def test_bundle_table_heatmap_and_claim(toy):
    at = start(src="bundle:toy/1/down", page=PAGE)
    df = _open_toy(at)
    assert len(df) == len(toy.layers) == 12
    row = df[(df["block"] == 2) & (df["input"] == "o")].iloc[0]
    layer = toy.layer(2, "o")
    # GPTQ's own column order (bundle format 2 stores it next to WaterSIC's)
    gptq_d = layer.d_gptq_by_rotation
    assert row["gap identity"] == pytest.approx(gptq_gap_bits(gptq_d["identity"]))
    assert row["gap Hadamard"] == pytest.approx(gptq_gap_bits(gptq_d["hadamard"]))
    assert row["gap act-order"] == pytest.approx(gptq_gap_bits(gptq_d["act_order"]))
    assert "GPTQ order" not in df.columns
    assert any(c.value.startswith("Gaps from the d GPTQ sees") for c in at.caption)
    assert row["n"] == 16 and "tokens < n" in row["warnings"]
    assert at.warning and "12 layers" in at.warning[0].value
    z = array(figure(at, "ls_heatmap")["data"][0]["z"])
    assert z.shape == (4, 3)  # layer inputs × blocks
    assert any("Llama-3-8B" in m.value and "0.1 bit" in m.value for m in at.markdown)
    claim = at.dataframe[1].value
    assert list(claim["input"]) == ["qkv", "o", "gate_up", "down"]


def test_haar_predictions_are_added_on_request(toy):
    at = start(src="bundle:toy/1/down", page=PAGE)
    _open_toy(at)
    at.toggle(key="ls_haar").set_value(True).run()
    df = at.dataframe[0].value
    assert df["gap Haar"].notna().all() and (df["gap Haar"] >= 0).all()
    assert "gap Haar" in at.selectbox(key="ls_heat").options


def test_open_a_layer_on_the_covariance_page(toy):
    at = start(src="bundle:toy/1/down", page=PAGE)
    _open_toy(at)
    at.selectbox(key="ls_layer").set_value("bundle:toy/2/qkv").run()
    at.button(key="ls_open_cov").click().run()
    assert not at.exception
    assert at.session_state["wfviz_source"] == "bundle:toy/2/qkv"
    assert at.title[0].value == "Covariance Σ_X"
    assert at.selectbox(key="src_block").value == 2


@pytest.mark.usefixtures("spiked_default")
def test_uploaded_files_table_and_bad_file():
    at = start(page=PAGE)
    at.radio(key="ls_kind").set_value("uploaded files").run()
    files = [("a.npy", npy_bytes(np.geomspace(10, 1, 8)), "x"),
             ("b.npy", npy_bytes(np.diag([4.0, 1.0, 1.0])), "x"),
             ("bad.npy", b"garbage", "x")]
    at.file_uploader(key="ls_upload").set_value(files).run()
    assert not at.exception
    assert at.error and at.error[0].value.startswith("bad.npy: ")
    df = at.dataframe[0].value
    assert list(df["file"]) == ["a.npy", "b.npy"]
    assert df.loc[1, "gap identity"] == pytest.approx(gptq_gap_bits([4.0, 1.0, 1.0]))
    assert np.isnan(df.loc[0, "gap identity"])  # eigenvalues only: no native basis
