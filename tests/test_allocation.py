"""Cross-layer bit allocation: the waterfilling, its bad inputs, the baselines, the plan file and
`wfviz allocate` end to end on a tiny Llama."""

import json
import math

import numpy as np
import pytest

from tests._tiny_llm import (  # noqa: F401
    one_torch_thread,
    tiny_model,
    tiny_tokenizer,
    transformers,
    write_text,
)
from wfviz.allocation import (
    GreedyRates,
    LayerCost,
    RatePlan,
    allocate,
    heuristic_plan,
    layer_costs,
    measured_costs,
    uniform_plan,
    use_more_bits,
)
from wfviz.cli import main
from wfviz.errors import WfvizError
from wfviz.model_grid import read_plan
from wfviz.model_quant import model_linears, one_shot_sigmas, quantize_model

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow


def random_layers(n=40, seed=0, curve=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = int(rng.integers(100, 5000))
        gm = float(rng.normal(0, 2))
        s = float(rng.lognormal(0, 1))
        kind = ("q", "k", "v", "o", "gate", "up", "down")[i % 7]
        c = LayerCost(f"model.layers.{i // 7}.x.{i}", i // 7, kind, m,
                      float(rng.lognormal(-8, 0.5)), gm, gm + float(rng.uniform(0, 2)), s)
        if curve:  # a convex log2-D curve with a little curvature and a non-monotone blip
            r = np.array([2.0, 3.0, 4.0])
            d = c.kappa("watersic") * np.exp2(-1.7 * r - 0.1 * (r - 2) ** 2)
            c = LayerCost(**{**c.__dict__, "curve_rates": tuple(r),
                             "curve_distortions": tuple(d)})
        out.append(c)
    return out


@pytest.mark.parametrize("cost", ["high-rate", "measured"])
@pytest.mark.parametrize("budget", [1.5, 2.5, 3.0, 7.9])
def test_budget_met_and_better_than_uniform(cost, budget):
    layers = random_layers(curve=True)
    plan = allocate(layers, budget, cost=cost, min_rate=1.0, max_rate=8.0)
    m = np.array([la.weights for la in layers])
    r = np.array([plan.rates[la.name] for la in layers])
    assert abs(m @ r / m.sum() - budget) < 1e-3 and abs(plan.average - budget) < 1e-9
    assert r.min() >= 1.0 - 1e-12 and r.max() <= 8.0 + 1e-12
    assert plan.predicted_dnll <= plan.uniform_dnll * (1 + 1e-9)
    assert plan.predicted_dnll < plan.uniform_dnll or budget > 7  # strictly, when not clipped


def test_high_rate_closed_form_and_equal_slope():
    layers = random_layers()
    plan = allocate(layers, 4.0, min_rate=0.0, max_rate=16.0)
    for la in layers:
        r = plan.rates[la.name]
        want = max(0.0, 0.5 * math.log2(la.sensitivity * la.kappa("watersic") / plan.theta))
        assert r == pytest.approx(want, abs=1e-9)
        if r > 0:  # every layer above the water ends at the same weighted distortion
            assert la.sensitivity * la.kappa("watersic") * 2 ** (-2 * r) == \
                pytest.approx(plan.theta, rel=1e-9)


def test_gptq_uses_the_arithmetic_mean():
    a = LayerCost("a", 0, "q", 10, 1.0, 0.0, 2.0)
    b = LayerCost("b", 0, "k", 10, 1.0, 0.0, 0.0)
    w = allocate([a, b], 3.0, method="watersic")
    g = allocate([a, b], 3.0, method="gptq-ec")
    assert w.rates["a"] == pytest.approx(3.0) and g.rates["a"] == pytest.approx(3.5)


def test_measured_matches_high_rate_on_exact_curves():
    # curves sampled from κ 2^{-2R} are the high-rate model itself
    layers = []
    for la in random_layers(10):
        r = (1.0, 3.0, 5.0)
        layers.append(LayerCost(**{**la.__dict__, "curve_rates": r, "curve_distortions":
                                   tuple(la.kappa("watersic") * 2.0 ** (-2 * x) for x in r)}))
    hr = allocate(layers, 3.0, cost="high-rate", min_rate=1, max_rate=8)
    me = allocate(layers, 3.0, cost="measured", min_rate=1, max_rate=8)
    for name in hr.rates:
        assert me.rates[name] == pytest.approx(hr.rates[name], abs=1e-6)
    assert me.theta == pytest.approx(hr.theta, rel=1e-6)


def test_measured_curve_is_monotone_and_convex():
    from wfviz.allocation import _Measured

    c = _Measured([2, 3, 4, 5], [1.0, 0.2, 0.1, 0.15], "x")  # 0.2 is above the chord; 0.15 rises
    grid = np.linspace(1, 6, 101)
    y = np.log2(c.distortion(grid))
    assert np.all(np.diff(y) < 0) and np.all(np.diff(y, 2) >= -1e-9)


def test_sensitivity_moves_bits():
    layers = [LayerCost("a", 0, "q", 10, 1.0, 0.0, 0.0), LayerCost("b", 0, "k", 10, 1.0, 0.0, 0.0)]
    plan = allocate(layers, 3.0, sensitivity={"a": 4.0, "b": 1.0}, sensitivity_name="noise")
    assert plan.rates["a"] == pytest.approx(3.5) and plan.rates["b"] == pytest.approx(2.5)
    assert plan.sensitivity == "noise"


@pytest.mark.parametrize("kwargs, match", [
    ({"budget_bits": -0.5}, "from 0 to 16"),
    ({"budget_bits": 16.5}, "from 0 to 16"),
    ({"budget_bits": float("nan")}, "from 0 to 16"),
    ({"budget_bits": 3.0, "sensitivity": {"a": float("nan"), "b": 1.0}}, "NaN"),
    ({"budget_bits": 3.0, "sensitivity": {"a": -1.0, "b": 1.0}}, "negative"),
    ({"budget_bits": 3.0, "sensitivity": {"a": 1.0, "b": 1.0, "zz": 1.0}}, "'zz'"),
    ({"budget_bits": 3.0, "sensitivity": {"a": 1.0}}, "no value for layer 'b'"),
    ({"budget_bits": 3.0, "cost": "exact"}, "Unknown cost"),
    ({"budget_bits": 3.0, "method": "gptq"}, "Unknown allocation method"),
    ({"budget_bits": 3.0, "cost": "measured"}, "no usable measured cost curve"),
    ({"budget_bits": 9.0, "max_rate": 8.0}, "outside"),
])
def test_bad_input_is_one_sentence(kwargs, match):
    layers = [LayerCost("a", 0, "q", 10, 1.0, 0.0, 0.0), LayerCost("b", 0, "k", 10, 1.0, 0.0, 0.0)]
    with pytest.raises(WfvizError, match=match) as err:
        allocate(layers, **kwargs)
    assert "\n" not in str(err.value)


def test_empty_layers():
    with pytest.raises(WfvizError, match="No layers"):
        allocate([], 3.0)


def test_uniform_and_heuristic_keep_the_budget():
    layers = random_layers(7 * 16)
    u = uniform_plan(layers, 3.0)
    h = heuristic_plan(layers, 3.0)
    w = allocate(layers, 3.0, min_rate=0.5, max_rate=8)
    for p in (u, h, w):
        assert p.average == pytest.approx(3.0, abs=1e-9)
        assert p.uniform_dnll == pytest.approx(u.predicted_dnll)
    assert w.predicted_dnll < min(u.predicted_dnll, h.predicted_dnll)
    boosted = {la.name for la in layers if la.kind in ("v", "down") and use_more_bits(la.block, 16)}
    high = max(h.rates.values())
    assert {n for n, r in h.rates.items() if r == high} == boosted
    assert high - min(h.rates.values()) == pytest.approx(1.0)


def test_greedy_passes_leftovers_on():
    g = GreedyRates({"a": 100, "b": 100, "c": 200}, 3.0)
    assert g.next_rate("a", 100) == 3.0
    g.record("a", 400.0)  # overshoot by 100 bits
    assert g.next_rate("b", 100) == pytest.approx((1200 - 400) / 300)
    g.record("b", 250.0)
    assert g.next_rate("c", 200) == pytest.approx(550 / 200)


def test_plan_json_round_trip_and_read_plan(tmp_path):
    plan = allocate(random_layers(5), 3.0, model="tiny", model_fingerprint={"files": {"m": "1"}})
    assert RatePlan.from_json(plan.to_json()) == plan
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    rates, label, sha = read_plan(path, model={"files": {"m": "1"}, "label": "tiny"})
    assert rates == plan.rates and label == "plan.json" and len(sha) == 64
    with pytest.raises(WfvizError, match="was made for model tiny, not for other"):
        read_plan(path, model={"files": {"m": "2"}, "label": "other"})
    with pytest.raises(WfvizError, match="not a wfviz rate plan"):
        RatePlan.from_json("{}")


# ---------------------------------------------------------------------------------------------
# On a tiny model


@pytest.fixture(scope="module")
def tiny():
    from tests._tiny_llm import random_windows

    m = tiny_model()
    windows = random_windows(256, 128)
    return m, windows, one_shot_sigmas(m, windows)


def test_layer_costs_and_measured_costs(tiny):
    m, windows, sigmas = tiny
    costs = layer_costs(m, sigmas, rotation="hadamard")
    names = [la.name for la in model_linears(m)]
    assert [c.name for c in costs] == names and {c.kind for c in costs} == set("qkvo") | {
        "gate", "up", "down"}
    assert all(c.sigma_w2 > 0 and c.log2_am_d >= c.log2_gm_d - 1e-9 for c in costs)
    measured = measured_costs(m, sigmas, rates=(2, 4), method="gptq-ec", rotation="hadamard")
    for c in measured:
        assert len(c.curve_rates) == 2 and c.curve_distortions[0] > c.curve_distortions[1]
        # the high-rate model predicts the measured distortion at 4 bits to within a factor of 4
        # (the 32-row k/v layers of the tiny model count entropy from few samples)
        ratio = c.curve_distortions[1] / (c.kappa("gptq-ec") * 2 ** (-2 * c.curve_rates[1]))
        assert 0.25 < ratio < 4, (c.name, ratio)
    plan = allocate(measured, 3.0, cost="measured", method="gptq-ec", min_rate=1, max_rate=8)
    assert plan.average == pytest.approx(3.0, abs=1e-3)


def test_greedy_controller_runs_in_quantize_model(tiny):
    m, windows, sigmas = tiny
    layers = model_linears(m)
    g = GreedyRates({la.name: la.weights for la in layers}, 3.0)
    res = quantize_model(m, windows, method="watersic", plan=g, sigmas=sigmas, copy=True)
    assert abs(res.rate - 3.0) < 0.05  # leftovers passed on keep the total on budget


# ---------------------------------------------------------------------------------------------
# The CLI


def alloc_args(model_dir, text, out, **extra):
    opts = {"--model": str(model_dir), "--text": str(text), "--calib-tokens": "256",
            "--seq-len": "128", "--device": "cpu", "--budget": "3", "--out": str(out), **extra}
    return ["allocate", *[x for kv in opts.items() for x in kv]]


def test_cli_allocate_then_quantize_model(model_dir, text, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WFVIZ_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "plan.json"
    # the 32-row k/v layers cannot measure more than 5 bits of column entropy
    extra = {"--sensitivity": "fisher", "--max-rate": "4.5"}
    assert main(alloc_args(model_dir, text, out, **extra)) == 0, \
        capsys.readouterr().err
    assert "waterfilling plan" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["format"] == "wfviz-rate-plan" and doc["sensitivity"] == "fisher"
    assert abs(doc["average"] - 3.0) < 1e-3 and len(doc["rates"]) == 14
    sigma_files = list((tmp_path / "cache" / "sigma").iterdir())
    grid = tmp_path / "grid"
    assert main(["quantize-model", "--model", str(model_dir), "--text", str(text),
                 "--calib-tokens", "256", "--eval-tokens", "256", "--seq-len", "128",
                 "--device", "cpu", "--methods", "watersic", "--plan", str(out),
                 "--out", str(grid)]) == 0, capsys.readouterr().err
    assert list((tmp_path / "cache" / "sigma").iterdir()) == sigma_files  # one Σ_X, shared
    point = json.loads((grid / "results.json").read_text())["points"][0]
    assert point["plan"] == "plan.json" and abs(point["rate"] - 3.0) < 0.1

    # another model's plan is refused before anything is quantized
    doc["model_fingerprint"] = {"files": {"model.safetensors": "0" * 64}}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    code = main(["quantize-model", "--model", str(model_dir), "--text", str(text),
                 "--calib-tokens", "256", "--eval-tokens", "256", "--seq-len", "128",
                 "--device", "cpu", "--methods", "watersic", "--plan", str(other),
                 "--out", str(tmp_path / "grid2")])
    assert code == 2 and "was made for model" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["llama-cpp", "gptqmodel"])
def test_cli_export_formats(model_dir, text, tmp_path, monkeypatch, capsys, fmt):
    monkeypatch.setenv("WFVIZ_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "plan.txt"
    assert main(alloc_args(model_dir, text, out, **{"--format": fmt})) == 0
    body = out.read_text()
    if fmt == "llama-cpp":
        lines = body.splitlines()
        assert len(lines) == 14 and all(line.startswith("--tensor-type ^blk\\.") for line in lines)
    else:
        assert len(json.loads(body)) == 14


@pytest.mark.parametrize("extra, match", [
    ({"--budget": "17"}, "from 0 to 16"),
    ({"--budget": "-1"}, "from 0 to 16"),
    ({"--sensitivity": "hessian"}, "Unknown --sensitivity"),
    ({"--format": "onnx"}, "Unknown --format"),
])
def test_cli_bad_input(model_dir, text, tmp_path, capsys, extra, match):
    out = tmp_path / "plan.json"
    assert main(alloc_args(model_dir, text, out, **extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("wfviz: error: ") and match in err and err.count("\n") == 1
    assert not out.exists()
