"""Learn page: every step renders, navigation, deep link to a step, presenter mode, and each
step's example against the theory it teaches."""

import numpy as np
import pytest
from _apptest import (  # noqa: F401  (no_pages_folder_mode is an autouse fixture)
    array,
    figure,
    metric,
    no_pages_folder_mode,
    start,
    trace,
)

from wfviz.bundles import load_bundle
from wfviz.theory import SPACE_FILLING_LOSS, cholesky_diag, gptq_gap_bits

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

PAGE = "pages/learn.py"
SMALL = "synthetic:powerlaw?n=48&seed=0&basis=native&alpha=1.5"


def _title(at) -> str:
    return at.title[0].value


def _step(k: int):
    at = start(src=SMALL)
    at.query_params["step"] = str(k)
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    assert _title(at).startswith(str(k))
    return at


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
    # No stray text: Streamlit's magic must not print the page's constants' docstrings.
    assert not any("Rows of the small" in m.value for m in at.markdown)


def test_weighted_mse_damage_is_the_quadratic_form():
    at = _step(1)
    at.slider(key="learn_angle").set_value(125).run()  # 90° from the loud direction (35°)
    at.slider(key="learn_ratio").set_value(50.0).run()
    assert float(metric(at, "damage eᵀΣe of your error")) == pytest.approx(1.0)
    curve = array(trace(figure(at, "learn_fig_wmse"), "eᵀΣ_X e for ‖e‖ = 1")["y"])
    assert curve.max() == pytest.approx(50.0) and curve.min() == pytest.approx(1.0)
    assert np.argmax(curve) == 35
    assert metric(at, "error allowed along u₂ vs u₁, same damage") == f"{np.sqrt(50):.3g}×"


def test_step_link_and_waterfilling_example():
    at = _step(2)
    at.slider(key="learn_rate").set_value(2.0).run()
    theta = float(metric(at, "water level θ"))
    lam = np.arange(1, 25, dtype=float) ** -1.5
    rate = np.maximum(0, 0.5 * np.log2(lam / theta)).mean()
    assert abs(rate - 2.0) < 1e-2  # θ is shown to 3 significant digits
    bars = array(trace(figure(at, "learn_fig_rates"), "R_i")["y"])
    assert bars.mean() == pytest.approx(2.0, rel=1e-9)
    np.testing.assert_array_equal(bars == 0, lam <= float(figure(at, "learn_vessel")["layout"][
        "shapes"][0]["y0"]))
    assert int(metric(at, "coordinates with zero rate")) == int(np.sum(bars == 0))


def test_sic_step_feedback_leaves_each_column_its_rounding_error():
    at = _step(3)
    assert float(metric(at, "Σ log2 d_j")) == pytest.approx(float(metric(at, "log2 det Σ_X")),
                                                            abs=1e-3)
    errors = figure(at, "learn_fig_sic_err")
    c2_12 = array(trace(errors, "c²/12")["y"])[0]
    with_fb = array(trace(errors, "SIC (with feedback)")["y"])
    without = array(trace(errors, "without feedback")["y"])
    np.testing.assert_allclose(with_fb, c2_12, rtol=0.15)  # uniform rounding error, 512 rows
    assert np.all(without[:-1] > with_fb[:-1])  # the last column is decided first: no feedback
    assert without[-1] == pytest.approx(with_fb[-1], rel=1e-12)
    ratio = float(metric(at, "damage without feedback ÷ with SIC").rstrip("×"))
    assert ratio == pytest.approx(without.mean() / with_fb.mean(), rel=1e-2) and ratio > 2
    rho = at.slider(key="learn_rho").value
    d = array(trace(figure(at, "learn_fig_sic"), "d_j = Var(X_j | X_<j)")["y"])
    np.testing.assert_allclose(d, [1.0] + [1 - rho**2] * 15, rtol=1e-9)  # AR(1) innovations
    with_bits, without_bits = (float(v) for v in metric(
        at, "bits per weight with SIC / without").split(" / "))
    assert with_bits == pytest.approx(without_bits, abs=0.1)


def test_gptq_vs_watersic_step_distortions_differ_by_am_over_gm():
    at = _step(4)
    at.slider(key="learn_rate2").set_value(3.0).run()
    cols = figure(at, "learn_fig_cols")
    rates = array(trace(cols, "WaterSIC R_j")["y"])
    assert rates.mean() == pytest.approx(3.0, rel=1e-12) and np.all(rates >= 0)
    dist = figure(at, "learn_fig_cols_d")
    gptq = array(trace(dist, "GPTQ D_j ∝ d_j")["y"])
    ws = array(trace(dist, "WaterSIC D_j (flat)")["y"])
    d = np.arange(1, 17, dtype=float) ** -1.5
    np.testing.assert_allclose(gptq, SPACE_FILLING_LOSS * d * 2.0**-6, rtol=1e-12)
    assert float(metric(at, "AM(d)/GM(d) = D_GPTQ / D_WaterSIC")) == pytest.approx(
        gptq.mean() / ws.mean(), rel=1e-2)
    assert metric(at, "GPTQ loses (bits)") == f"{gptq_gap_bits(d):.3f}"


def test_rotation_step_keeps_the_determinant():
    at = _step(5)
    at.selectbox(key="learn_rot").set_value("eigenbasis").run()
    fig = figure(at, "learn_fig_rot")
    d0 = array(trace(fig, "identity")["y"])
    d1 = array(trace(fig, "eigenbasis (KLT)")["y"])
    assert np.log2(d0).sum() == pytest.approx(np.log2(d1).sum(), rel=1e-9)
    assert metric(at, "GPTQ gap, identity (bits)") == f"{gptq_gap_bits(d0):.3f}"
    gaps = [float(metric(at, f"GPTQ gap, {r} (bits)")) for r in ("identity", "eigenbasis (KLT)")]
    assert gaps[1] > gaps[0]  # d = λ: the worst basis for GPTQ
    rotated_sigma = np.ones(32)
    rotated_sigma[:3] = 300.0
    sigma = 0.5 ** np.abs(np.subtract.outer(np.arange(32), np.arange(32))) * np.sqrt(
        np.outer(rotated_sigma, rotated_sigma))
    np.testing.assert_allclose(d0, cholesky_diag(sigma, order="gptq"), rtol=1e-9)  # GPTQ's d


def test_real_layers_step_shows_the_bundled_gaps():
    at = _step(6)
    bundle = load_bundle("smollm2-135m-wikitext2")
    block = at.slider(key="learn_block").value
    fig = figure(at, "learn_fig_real")
    hadamard = array(trace(fig, "randomized Hadamard")["y"])
    covs = [bundle.layer(block, i) for i in ("qkv", "o", "gate_up", "down")]
    gptq = all(c.d_gptq_by_rotation for c in covs)  # GPTQ's own order when the bundle has it
    expected = [gptq_gap_bits((c.d_gptq_by_rotation if gptq else c.d_by_rotation)["hadamard"])
                for c in covs]
    np.testing.assert_allclose(hadamard, expected, atol=5e-4)  # rounded to 3 decimals
    names = [t["name"] for t in fig["data"]]
    assert ("act-order (sort by diag Σ)" in names) == gptq
    assert [s["y0"] for s in fig["layout"]["shapes"]] == [0.1]


def test_bad_step_param_falls_back_to_first_step():
    at = start(src=SMALL)
    at.query_params["step"] = "banana"
    at.switch_page(PAGE).run()
    assert not at.exception and _title(at).startswith("1")


def test_glossary_comes_first_and_the_sidebar_links_to_it_open():
    from wfviz.glossary import GLOSSARY

    at = _step(2)
    (glossary,) = [e for e in at.expander if e.label.startswith("Glossary")]
    text = " ".join(m.value for m in glossary.markdown)
    for term in ("SIC", "AM/GM", "d_j", "Σ_X", "rate metric", "parametric_coded",
                 "column_entropy"):
        assert f"**{term}**: {GLOSSARY[term]}" in text
    assert "perplexity" not in text  # the whole-model terms are not on these pages
    first = next(iter(at.main.children.values()))
    assert type(first).__name__ == "Expander" and first.label == glossary.label  # before all
    assert not glossary.proto.expanded
    links = [p for p in at.sidebar.get("page_link") if p.proto.label == "Glossary of terms"]
    assert [(p.proto.page, p.proto.query_string) for p in links] == [("learn", "glossary=open")]
    at = start(src=SMALL)
    at.query_params["glossary"] = "open"
    at.switch_page(PAGE).run()
    (glossary,) = [e for e in at.expander if e.label.startswith("Glossary")]
    assert glossary.proto.expanded


def test_rotation_step_shows_the_haar_gap_as_mean_and_spread():
    from wfviz.covariance_io import validate_covariance
    from wfviz.sources import synthetic
    from wfviz.stats import haar_gap

    at = _step(5)
    at.selectbox(key="learn_rot").set_value("haar").run()
    assert not at.exception
    spikes = at.slider(key="learn_spikes").value
    diag = np.ones(32)
    diag[:spikes] = 300.0
    sigma = synthetic("ar1", 32, rho=0.5).matrix * np.sqrt(np.outer(diag, diag))
    h = haar_gap(validate_covariance(sigma))
    assert metric(at, "GPTQ gap, Haar (bits, mean ± sd of 5)") == (
        f"{h['mean']:.3f} ± {h['std']:.3f}")
