"""Learn page: every step renders, navigation, deep link to a step, presenter mode."""

import numpy as np
from _apptest import no_pages_folder_mode, start  # noqa: F401  (autouse fixture)

PAGE = "pages/learn.py"
SMALL = "synthetic:powerlaw?n=48&seed=0&basis=native&alpha=1.5"


def _title(at) -> str:
    return at.title[0].value


def test_every_step_renders_with_next_and_previous():
    at = start(src=SMALL, page=PAGE)
    titles = [_title(at)]
    assert at.button(key="learn_prev").disabled
    for _ in range(5):
        at.button(key="learn_next").click().run()
        assert not at.exception, at.exception
        titles.append(_title(at))
    assert [t[0] for t in titles] == list("123456")
    assert at.button(key="learn_next").disabled
    assert at.query_params["step"] in ("6", ["6"])
    at.button(key="learn_prev").click().run()
    assert _title(at).startswith("5")


def test_step_link_and_waterfilling_example():
    at = start(src=SMALL)
    at.query_params["step"] = "2"
    at.switch_page(PAGE).run()
    assert _title(at).startswith("2")
    at.slider(key="learn_rate").set_value(2.0).run()
    theta = float(at.metric[0].value)
    lam = np.arange(1, 25, dtype=float) ** -1.5
    rate = np.maximum(0, 0.5 * np.log2(lam / theta)).mean()
    assert abs(rate - 2.0) < 1e-2  # θ is shown to 3 significant digits


def test_sic_step_shows_det_identity_and_presenter_css():
    at = start(src=SMALL)
    at.query_params["step"] = "3"
    at.switch_page(PAGE).run()
    at.toggle(key="learn_presenter").set_value(True).run()
    assert not at.exception
    logs = [float(m.value) for m in at.metric]
    assert abs(logs[0] - logs[1]) < 1e-3  # Σ log2 d_j = log2 det Σ
    assert any("font-size" in m.value for m in at.markdown)


def test_bad_step_param_falls_back_to_first_step():
    at = start(src=SMALL)
    at.query_params["step"] = "banana"
    at.switch_page(PAGE).run()
    assert not at.exception and _title(at).startswith("1")
