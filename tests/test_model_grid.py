"""`wfviz quantize-model` on a tiny random Llama saved to disk: files, resume, cancel, bad input."""

import json

import pytest
import torch

from tests._tiny_llm import (  # noqa: F401
    one_torch_thread,
    tiny_model,
    tiny_tokenizer,
    transformers,
    write_text,
)
from wfviz.cli import main
from wfviz.errors import WfvizError
from wfviz.model_eval import evaluate_model
from wfviz.model_grid import CSV_COLUMNS, ModelGridConfig, run_model_grid
from wfviz.model_quant import model_linears
from wfviz.model_text import load_texts
from wfviz.quantizers.base import Cancelled

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WFVIZ_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def args(model_dir, text, out, **extra):
    opts = {"--model": str(model_dir), "--text": str(text), "--calib-tokens": "256",
            "--eval-tokens": "256", "--seq-len": "128", "--device": "cpu", "--out": str(out),
            "--methods": "gptq", "--rates": "3,4", **extra}
    return ["quantize-model", *[x for kv in opts.items() for x in kv if x is not None]]


def tree(path):
    """Every file under path with its bytes: to check a folder was left exactly as it was."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_cli_writes_results_and_resumes(model_dir, text, tmp_path, cache, capsys):
    out = tmp_path / "grid"
    assert main(args(model_dir, text, out)) == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "reference" in table and "gptq_identity_3b_one-shot" in table
    results = json.loads((out / "results.json").read_text())
    prov = results["provenance"]
    assert prov["spans"]["calibration"]["tokens"] == 256
    assert prov["spans"]["evaluation"]["start"] == 256 and prov["spans"]["seq_len"] == 128
    assert len(prov["spans"]["evaluation"]["text"]["sha256"]) == 64
    assert prov["model"]["files"]["model.safetensors"] and prov["runs"][0]["command"]
    assert str(tmp_path) not in json.dumps(prov)
    ids = [p["id"] for p in results["points"]]
    assert ids == ["gptq_identity_3b_one-shot", "gptq_identity_4b_one-shot"]
    ref = results["reference"]
    # the reference row is the loaded model's own perplexity on the evaluation windows
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = load_texts(tiny_tokenizer(), text=text, calib_tokens=256, eval_tokens=256,
                       seq_len=128)
    assert ref["ppl"] == pytest.approx(evaluate_model(model, texts.evaluation).ppl, rel=1e-6)
    for p in results["points"]:
        assert p["rate_metric"] == "log_cardinality" and p["kl"] > 0 and p["eval_tokens"] == 254
        assert p["rate"] > p["target_rate"]  # side information is charged
        layers = json.loads((out / "points" / f"{p['id']}.json").read_text())["layers"]
        assert [row["name"] for row in layers] == [la.name for la in model_linears(model)]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == list(CSV_COLUMNS) and len(csv_lines) == 4
    assert list(cache.iterdir()) and {p.name for p in cache.iterdir()} == {"sigma", "logprobs"}

    # resume: the finished points are kept byte for byte, the new one is added
    old = tree(out / "points")
    assert main(args(model_dir, text, out, **{"--rates": "2,3,4", "--resume": None})) == 0
    err = capsys.readouterr().err
    assert "resuming: 2 of 3 points" in err
    new = tree(out / "points")
    assert all(new[k] == v for k, v in old.items()) and len(new) == len(old) + 1
    assert len(json.loads((out / "results.json").read_text())["provenance"]["runs"]) == 2


def test_cancel_keeps_finished_points(model_dir, text, tmp_path, cache):
    out = tmp_path / "grid"
    cfg = ModelGridConfig(model=str(model_dir), text=str(text), calib_tokens=256,
                          eval_tokens=256, seq_len=128, device="cpu", out=str(out),
                          methods=("rtn",), rates=(2.0, 3.0, 4.0), calibrations=("sequential",))
    started = []

    def on_point(done, total, label):
        started.append(label)

    with pytest.raises(Cancelled):
        run_model_grid(cfg, on_point=on_point, cancel=lambda: len(started) > 2)
    assert started == ["reference", "rtn_identity_2b_sequential", "rtn_identity_3b_sequential"]
    results = json.loads((out / "results.json").read_text())
    assert [p["id"] for p in results["points"]] == ["rtn_identity_2b_sequential"]
    assert not list((out / "points").glob(".*"))  # no temporary left behind
    cfg = ModelGridConfig(**{**cfg.__dict__, "resume": True})
    results = run_model_grid(cfg)
    assert len(results["points"]) == 3 and results["points"][2]["calibration"] == "sequential"


def test_sequential_and_one_shot_and_plan(model_dir, text, tmp_path, cache):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    plan = {la.name: (3 if la.kind == "down_proj" else 2) for la in model_linears(model)}
    (tmp_path / "plan.json").write_text(json.dumps({"rates": plan}))
    cfg = ModelGridConfig(model=str(model_dir), text=str(text), calib_tokens=256,
                          eval_tokens=256, seq_len=128, device="cpu", out=str(tmp_path / "g"),
                          methods=("gptq",), plan=str(tmp_path / "plan.json"),
                          calibrations=("one-shot", "sequential"))
    results = run_model_grid(cfg)
    rows = {p["calibration"]: p for p in results["points"]}
    assert set(rows) == {"one-shot", "sequential"} and rows["one-shot"]["plan"] == "plan.json"
    assert rows["one-shot"]["nll"] != rows["sequential"]["nll"]
    down = sum(la.weights for la in model_linears(model) if la.kind == "down_proj")
    total = sum(la.weights for la in model_linears(model))
    want = (3 * down + 2 * (total - down)) / total
    assert rows["sequential"]["rate"] == pytest.approx(want, abs=0.3)  # + side information


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=62, n_positions=256)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


BAD = [
    ({"--model": "/no/such/model"}, "does not exist"),
    ({"--model": "GPT2"}, "no linear layers to quantize"),
    ({"--eval-tokens": "2000"}, "has only 1200 tokens"),
    ({"--eval-start": "100"}, "overlap"),
    ({"--methods": "gptq,awq"}, "Unknown method 'awq'"),
    ({"--rotations": "spin"}, "Unknown rotation 'spin'"),
    ({"--rates": "2.5"}, "whole numbers"),
    ({"--rates": "three"}, "--rates must be"),
    ({"--plan": "PLAN"}, "names layer 'model.layers.7.mlp.up_proj'"),
    ({"--calibration": "twice"}, "Unknown calibration"),
    ({"--text": "/no/such.txt"}, "Cannot read the text file"),
    ({"--resume": "NO"}, "already holds results"),
]


@pytest.mark.parametrize("change, message", BAD)
def test_bad_input_one_line_exit_2_folder_unchanged(model_dir, gpt2_dir, text, tmp_path, cache,
                                                    capsys, change, message):
    out = tmp_path / "grid"
    (out / "points").mkdir(parents=True)
    (out / "points" / "reference.json").write_text('{"row": {"id": "reference"}}')
    before, cached = tree(out), tree(cache)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"model.layers.7.mlp.up_proj": 3}))
    change = dict(change)
    if change.get("--model") == "GPT2":
        change["--model"] = str(gpt2_dir)
    if change.get("--plan") == "PLAN":
        change["--plan"] = str(plan)
    if change.pop("--resume", None) is None:
        change["--resume"] = None
    rc = main(args(model_dir, text, out, **change))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("wfviz: error: ") and message in last, err
    assert err.count("wfviz: error") == 1 and last.count(". ") == 0
    assert tree(out) == before and tree(cache) == cached


def test_grid_points_checked_before_anything_loads(tmp_path):
    cfg = ModelGridConfig(model=str(tmp_path / "none"), out=str(tmp_path / "o"),
                          calib_tokens=8, eval_tokens=8, text="x", methods=("rtn",),
                          rates=(0.5,))
    with pytest.raises(WfvizError, match="whole numbers"):
        run_model_grid(cfg)
    assert not (tmp_path / "o").exists()


def test_group_size_runs_gptq_groups_and_counts_their_scales(model_dir, text, tmp_path, cache,
                                                              capsys):
    out = tmp_path / "grid"
    assert main(args(model_dir, text, out, **{"--rates": "4", "--methods": "gptq,watersic",
                                              "--group-size": "32"})) == 0
    capsys.readouterr()
    rows = {p["id"]: p for p in json.loads((out / "results.json").read_text())["points"]}
    assert set(rows) == {"gptq_identity_4b-g32_one-shot", "watersic_identity_4b_one-shot"}
    assert main(args(model_dir, text, out, **{"--rates": "4", "--resume": None})) == 0
    plain = {p["id"]: p for p in json.loads((out / "results.json").read_text())["points"]}
    # a scale per 32 columns costs more side information than one per row
    assert plain["gptq_identity_4b-g32_one-shot"]["rate"] > plain["gptq_identity_4b_one-shot"][
        "rate"]
    capsys.readouterr()
    for bad in ("-1", "2.5"):
        code = main(args(model_dir, text, tmp_path / "bad", **{"--group-size": bad}))
        assert code == 2 and "group" in capsys.readouterr().err
    assert main(args(model_dir, text, tmp_path / "bad", **{"--methods": "watersic",
                                                           "--group-size": "32"})) == 2
    assert "applies to gptq only" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
