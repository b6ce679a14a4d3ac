"""The app frame (app.py + pages/_ui.py): navigation, the shared source sidebar, URL state."""

import numpy as np
import pytest
from _apptest import (  # noqa: F401  (fixtures: no_pages_folder_mode is autouse, spiked_default)
    SPIKED,
    metric,
    no_pages_folder_mode,
    npy_bytes,
    spiked_default,
    start,
    write_toy_bundle,
)

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow


@pytest.fixture
def toy_bundle(tmp_path, monkeypatch):
    write_toy_bundle(tmp_path)
    monkeypatch.setenv("WFVIZ_DATA", str(tmp_path))
    return "toy"


def test_default_source_renders_every_page():
    from pages._ui import FALLBACK_SOURCE, PREFERRED_LAYER, installed_bundles

    at = start()
    src = at.session_state["wfviz_source"]
    shipped = [b.name for b in installed_bundles()]
    if "smollm2-135m-wikitext2" in shipped:
        block, name = PREFERRED_LAYER
        assert src == f"bundle:smollm2-135m-wikitext2/{block}/{name}"
    elif not shipped:
        assert src == FALLBACK_SOURCE
    assert at.query_params["src"] in (src, [src])
    assert any("Compute device" in c.value for c in at.sidebar.caption)
    for page in ("pages/waterfilling.py", "pages/layer_stats.py", "pages/covariance.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.error, page
        assert at.title[0].value


def test_query_param_reproduces_a_synthetic_source():
    src = "synthetic:powerlaw?n=300&seed=1&basis=random&alpha=2.0"
    at = start(src=src)
    assert at.session_state["wfviz_source"] == src
    assert at.radio(key="src_kind").value == "synthetic"
    assert at.number_input(key="syn_n").value == 300
    assert at.selectbox(key="syn_basis").value == "random"
    assert metric(at, "n (input features)") == "300"


def test_query_param_reproduces_a_bundle_layer(toy_bundle):
    at = start(src="bundle:toy/2/o")
    assert at.session_state["wfviz_source"] == "bundle:toy/2/o"
    assert at.selectbox(key="src_block").value == 2
    assert at.selectbox(key="src_input").value == "o"
    assert metric(at, "n (input features)") == "16"


@pytest.mark.usefixtures("spiked_default")
def test_bad_query_param_falls_back_with_an_error():
    at = start(src="/etc/passwd.npy")  # never read files named by a link
    assert at.sidebar.error and "not a bundled or synthetic source" in at.sidebar.error[0].value
    assert not at.session_state["wfviz_source"].startswith("/")


@pytest.mark.parametrize("src", ["bundle:no-such-bundle/0/down",
                                 "synthetic:spiked?n=16&n_spikes=99",
                                 "synthetic:ar1?n=1", "synthetic:ar1?n=64&rho=7"])
@pytest.mark.usefixtures("spiked_default")
def test_unusable_link_sources_fall_back_to_the_default(src):
    at = start(src=src)
    assert at.sidebar.error and at.sidebar.error[0].value.endswith(("instead.", "instead"))
    assert at.session_state["wfviz_source"] != src
    assert at.metric  # the default source is shown


def test_changing_the_synthetic_source_changes_n_and_the_url():
    at = start(src=SPIKED)
    at.number_input(key="syn_n").set_value(128).run()
    assert metric(at, "n (input features)") == "128"
    assert "n=128" in at.session_state["wfviz_source"]
    assert "n=128" in str(at.query_params["src"])
    at.selectbox(key="syn_family").set_value("ar1").run()
    assert at.session_state["wfviz_source"].startswith("synthetic:ar1?n=128")
    assert not at.exception


def test_invalid_synthetic_parameters_keep_the_previous_source():
    at = start(src=SPIKED)
    at.number_input(key="syn_spiked_n_spikes").set_value(300).run()  # more spikes than n = 256
    assert at.sidebar.error and "previous source stays selected" in at.sidebar.error[0].value
    assert at.session_state["wfviz_source"] == SPIKED
    assert metric(at, "n (input features)") == "256"


def test_bundle_widgets_switch_layers(toy_bundle):
    at = start(src="bundle:toy/1/down")
    at.selectbox(key="src_input").set_value("qkv").run()
    assert at.session_state["wfviz_source"] == "bundle:toy/1/qkv"
    at.selectbox(key="src_block").set_value(0).run()
    assert at.session_state["wfviz_source"] == "bundle:toy/0/qkv"
    assert any("eigenvalues only" in c.value for c in at.caption)  # block 0 is not full


def test_bad_upload_shows_one_sentence_and_keeps_the_source():
    at = start(src=SPIKED)
    at.radio(key="src_kind").set_value("uploaded").run()
    at.file_uploader(key="src_upload").set_value(("sigma.npy", b"not a numpy file", "x")).run()
    assert not at.exception
    assert at.sidebar.error and "previous source stays selected" in at.sidebar.error[0].value
    assert at.session_state["wfviz_source"] == SPIKED


def test_eigenvalue_upload_becomes_the_source_and_leaves_the_url():
    at = start(src=SPIKED)
    at.radio(key="src_kind").set_value("uploaded").run()
    lam = np.linspace(1.0, 10.0, 40)
    at.file_uploader(key="src_upload").set_value(("lam.npy", npy_bytes(lam), "x")).run()
    assert at.session_state["wfviz_source"].startswith("upload:")
    assert "src" not in at.query_params
    assert metric(at, "n (input features)") == "40"
    assert any("needs the full Σ_X matrix" in i.value for i in at.info)


def test_source_survives_page_switches():
    src = "synthetic:exponential?n=64&seed=0&basis=native&rate=5.0"
    at = start(src=src, page="pages/waterfilling.py")
    at.switch_page("pages/covariance.py").run()
    assert at.session_state["wfviz_source"] == src
    assert metric(at, "n (input features)") == "64"


@pytest.mark.usefixtures("spiked_default")
def test_presenter_mode_holds_on_every_page():
    from _apptest import figure

    from pages._ui import PRESENTER_CSS, PRESENTER_FONT

    at = start()
    assert not at.sidebar.toggle(key="presenter").value
    assert not any(m.value == PRESENTER_CSS for m in at.markdown)
    at.sidebar.toggle(key="presenter").set_value(True).run()
    for page, chart in (("pages/waterfilling.py", "wf_vessel"),
                        ("pages/learn.py", "learn_fig_plane"),
                        ("pages/covariance.py", "cov_spectrum")):
        at.switch_page(page).run()
        assert not at.exception, page
        assert at.sidebar.toggle(key="presenter").value, page
        assert any(m.value == PRESENTER_CSS for m in at.markdown), page
        layout = figure(at, chart)["layout"]
        assert layout["font"]["size"] == PRESENTER_FONT and layout["title"]["font"]["size"] > \
            PRESENTER_FONT, page
    at.sidebar.toggle(key="presenter").set_value(False).run()
    assert not any(m.value == PRESENTER_CSS for m in at.markdown)
    assert "font" not in figure(at, "cov_spectrum")["layout"] or figure(
        at, "cov_spectrum")["layout"]["font"].get("size") != PRESENTER_FONT
