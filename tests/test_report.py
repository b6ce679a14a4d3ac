"""By-layer-type GPTQ-vs-WaterSIC gap report on a bundle."""

import json

import numpy as np
import pytest

from wfviz.bundles import load_bundle
from wfviz.cli import main
from wfviz.collect import LayerStatistics, write_bundle
from wfviz.errors import WfvizError
from wfviz.report import PAPER_CLAIM, bundle_report, report_text
from wfviz.stats import haar_d
from wfviz.theory import gptq_gap_bits, log2_am_gm


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    rng = np.random.default_rng(3)
    sigmas = {}
    for b in (0, 1, 2):
        for name, n in (("qkv", 16), ("o", 16), ("gate_up", 16), ("down", 32)):
            # diagonal Σ with spread-out variances: the identity basis is GPTQ's worst case
            sigmas[(b, name)] = np.diag(np.exp(rng.uniform(-3, 3, n)))
    path = tmp_path_factory.mktemp("rep") / "toy"
    write_bundle(path, LayerStatistics(sigmas, tokens=500), provenance={"model": {"label": "Toy"}},
                 full_blocks=[1], progress=False)
    return load_bundle(path), sigmas


def test_predicted_gaps(toy):
    bundle, sigmas = toy
    rep = bundle_report(bundle, haar_seeds=3)
    assert len(rep["layers"]) == 12 and rep["measured"] is None
    assert list(rep["by_type"]) == ["qkv", "o", "gate_up", "down"]
    for r in rep["layers"]:
        lam = np.diag(sigmas[(r["block"], r["input"])])
        assert r["identity"] == pytest.approx(0.5 * log2_am_gm(lam), rel=1e-9)
        haar = [gptq_gap_bits(haar_d(np.sort(lam)[::-1], seed=s)) for s in range(3)]
        assert r["haar"] == pytest.approx(np.mean(haar), rel=1e-9)
        assert r["haar_min"] <= r["haar"] <= r["haar_max"]
        # rotating a diagonal Σ with spread variances spreads them out: the gap shrinks
        assert r["haar"] < r["identity"] and r["hadamard"] < r["identity"]
    down = [r["identity"] for r in rep["layers"] if r["input"] == "down"]
    s = rep["by_type"]["down"]["identity"]
    assert s == {"mean": pytest.approx(np.mean(down)), "min": min(down), "max": max(down),
                 "count": 3}


def test_report_text_and_cli(toy, capsys):
    bundle, _ = toy
    text = report_text(bundle_report(bundle, haar_seeds=2))
    assert "down_proj input" in text and PAPER_CLAIM in text and "By layer:" in text
    assert main(["report", str(bundle.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bundle"] == "toy" and out["haar_seeds"] == 5 and len(out["layers"]) == 12
    assert main(["report", str(bundle.path), "--json", "--haar-seeds", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["haar_seeds"] == 2


def test_bad_input(toy, capsys):
    bundle, _ = toy
    with pytest.raises(WfvizError, match="haar_seeds"):
        bundle_report(bundle, haar_seeds=0)
    assert main(["report", "no-such-bundle"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No bundle named 'no-such-bundle'" in err
    assert main(["report", str(bundle.path), "--haar-seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wfviz: error:") and "haar_seeds" in err and err.count("\n") == 1


def test_measured_gap_matches_prediction_at_high_rate(toy):
    bundle, _ = toy
    rep = bundle_report(bundle, haar_seeds=1, measure=True, device="cpu")
    assert {(m["block"], m["rotation"]) for m in rep["measured"]} == {
        (1, "identity"), (1, "hadamard")}
    for m in rep["measured"]:
        assert m["measured"] == pytest.approx(m["predicted"], abs=0.15)


def test_report_reports_progress_for_every_layer(toy):
    bundle, _ = toy
    seen = []
    bundle_report(bundle, haar_seeds=1, progress=lambda done, total, msg: seen.append(
        (done, total)))
    assert seen == [(k + 1, len(bundle.layers)) for k in range(len(bundle.layers))]
