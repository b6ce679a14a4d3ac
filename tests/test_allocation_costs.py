"""Stored allocation inputs: save/load round trip, bad files, versions, the shipped file, and
`wfviz allocate --save-costs` on a tiny Llama."""

import json

import pytest

from wfviz.allocation import (
    COSTS_FILE,
    COSTS_VERSION,
    LayerCost,
    allocate,
    load_costs,
    save_costs,
    shipped_costs,
)
from wfviz.errors import WfvizError


def toy(rotation_shift=0.0, curve=False):
    out = []
    for b in range(2):
        for i, kind in enumerate(("q", "down")):
            name = f"model.layers.{b}.{'self_attn' if kind == 'q' else 'mlp'}.{kind}_proj"
            rates, dist = ((2.0, 3.0), (0.1 * (i + 1), 0.03 * (i + 1))) if curve else ((), ())
            out.append(LayerCost(name, b, kind, 64 * (i + 1), 0.01 * (b + 1), -3.0 + i,
                                 -2.0 + i - rotation_shift, 1.0, rates, dist))
    return out


def write(tmp_path, **kw):
    names = [la.name for la in toy()]
    args = dict(provenance={"model": "toy", "model_fingerprint": {"files": {"m": "ab"}}},
                sensitivities={"fisher": {n: 0.5 + i for i, n in enumerate(names)}},
                curves={("watersic", "hadamard"): toy(curve=True)})
    return save_costs(tmp_path / COSTS_FILE, {"identity": toy(), "hadamard": toy(0.5)},
                      **{**args, **kw})


def test_round_trip(tmp_path):
    c = load_costs(write(tmp_path))
    assert c.rotations == ("identity", "hadamard")
    assert c.sensitivities == ("none", "fisher")
    assert c.curves == (("watersic", "hadamard"),)
    assert c.provenance["model"] == "toy"
    assert c.layer_costs("identity") == toy()  # sensitivity none: every s_l = 1
    had = c.layer_costs("hadamard", "fisher", ("watersic", "hadamard"))
    assert [la.log2_am_d for la in had] == [la.log2_am_d for la in toy(0.5)]
    assert [la.sensitivity for la in had] == [0.5, 1.5, 2.5, 3.5]
    assert had[1].curve_rates == (2.0, 3.0) and had[1].curve_distortions == (0.2, 0.06)
    # the stored inputs give the same plan as the layers they came from
    fisher = {la.name: 0.5 + i for i, la in enumerate(toy())}
    assert allocate(had, 2.5, cost="measured").rates == pytest.approx(
        allocate(toy(curve=True), 2.5, cost="measured", sensitivity=fisher).rates)
    with pytest.raises(WfvizError, match="no rotation 'haar'"):
        c.layer_costs("haar")
    with pytest.raises(WfvizError, match="no sensitivity 'noise'"):
        c.layer_costs("identity", "noise")
    with pytest.raises(WfvizError, match="no measured curve for gptq-ec/identity"):
        c.layer_costs("identity", curve=("gptq-ec", "identity"))


def test_bad_inputs_to_save(tmp_path):
    with pytest.raises(WfvizError, match="NaN, infinite or negative"):
        write(tmp_path, sensitivities={"fisher": {la.name: float("nan") for la in toy()}})
    with pytest.raises(WfvizError, match="not among the layers"):
        write(tmp_path, sensitivities={"fisher": {"model.layers.9.mlp.up_proj": 1.0}})
    with pytest.raises(WfvizError, match="not those of the other rotations"):
        save_costs(tmp_path / "x.json", {"identity": toy(), "hadamard": toy()[:2]},
                   provenance={})
    with pytest.raises(WfvizError, match="mapping of rotation"):
        save_costs(tmp_path / "x.json", toy(), provenance={})
    assert not (tmp_path / "x.json").exists() and not (tmp_path / COSTS_FILE).exists()


@pytest.mark.parametrize("content, match", [
    ("not json", "Cannot read"),
    ('{"format": "something else"}', "not a wfviz allocation costs file"),
    ('{"format": "wfviz allocation costs", "format_version": 1, "layers": []}',
     "no usable layer table"),
    ('{"format": "wfviz allocation costs", "format_version": 1, "layers": [{"name": "a"}]}',
     "no usable layer table"),
])
def test_bad_files_are_one_sentence(tmp_path, content, match):
    path = tmp_path / COSTS_FILE
    path.write_text(content)
    with pytest.raises(WfvizError, match=match) as err:
        load_costs(path)
    assert str(err.value).endswith(".") and "\n" not in str(err.value)


def test_unknown_version_is_refused(tmp_path):
    path = write(tmp_path)
    doc = json.loads(path.read_text())
    doc["format_version"] = COSTS_VERSION + 1
    path.write_text(json.dumps(doc))
    with pytest.raises(WfvizError, match=f"format version {COSTS_VERSION + 1}; this wfviz "
                                         f"reads {COSTS_VERSION}"):
        load_costs(path)
    with pytest.raises(WfvizError, match="does not exist"):
        load_costs(tmp_path / "missing.json")


def test_shipped_costs_found_beside_a_bundle(tmp_path, monkeypatch):
    from tests._apptest import write_toy_bundle

    root = tmp_path / "data"
    bundle = write_toy_bundle(root).parent
    monkeypatch.setattr("wfviz.bundles.bundle_dirs", lambda: [root])
    assert shipped_costs() is None
    write(bundle)
    found = shipped_costs()
    assert found is not None and found.layer_costs("identity") == toy()


def test_the_shipped_file_reads_and_allocates():
    """The real file in sample_covariances (made from SmolLM2-135M with Fisher sensitivities)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "sample_covariances" / \
        "smollm2-135m-wikitext2" / COSTS_FILE
    if not path.is_file():
        pytest.skip("no shipped allocation_costs.json")
    c = load_costs(path)
    assert set(c.rotations) == {"identity", "hadamard"} and "fisher" in c.sensitivities
    assert len(c.rows) == 210 and c.provenance["model_fingerprint"]["files"]
    plan = allocate(c.layer_costs("hadamard", "fisher"), 3.0, min_rate=1, max_rate=8)
    assert abs(plan.average - 3.0) < 1e-3 and plan.predicted_dnll < plan.uniform_dnll


def test_cli_save_costs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    from tests._tiny_llm import save_tiny_model, write_text
    from wfviz.cli import main

    monkeypatch.setenv("WFVIZ_CACHE_DIR", str(tmp_path / "cache"))
    model = save_tiny_model(tmp_path / "model")
    text = write_text(tmp_path / "wiki.txt", 1200)
    out, costs = tmp_path / "plan.json", tmp_path / COSTS_FILE
    assert main(["allocate", "--model", str(model), "--text", str(text), "--calib-tokens",
                 "256", "--seq-len", "128", "--device", "cpu", "--budget", "3",
                 "--sensitivity", "fisher", "--sensitivity-tokens", "128", "--max-rate", "4.5",
                 "--out", str(out), "--save-costs", str(costs)]) == 0, capsys.readouterr().err
    assert "allocation inputs" in capsys.readouterr().out
    c = load_costs(costs)
    assert c.rotations == ("identity", "hadamard") and c.sensitivities == ("none", "fisher")
    prov = c.provenance
    assert prov["sensitivities"]["fisher"]["tokens"] == 128
    assert prov["calibration"]["start"] == 0 and prov["calibration"]["tokens"] == 256
    assert prov["model_fingerprint"] == json.loads(out.read_text())["model_fingerprint"]
    assert str(tmp_path) not in json.dumps(prov)  # no local paths in the provenance
    # the stored inputs reproduce the plan the command wrote
    plan = json.loads(out.read_text())
    again = allocate(c.layer_costs("identity", "fisher"), 3.0, min_rate=1, max_rate=4.5)
    assert again.rates == pytest.approx(plan["rates"], abs=1e-6)
