"""`wfviz curve`: output formats and one-line errors."""

import json

import pytest

from wfviz.cli import main
from wfviz.errors import WfvizError
from wfviz.experiments import COLUMNS

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

SOURCE = "synthetic:powerlaw?n=16&seed=0"
BASE = ["curve", SOURCE, "--methods", "gptq-ec,gptq", "--rotations", "identity,haar",
        "--rates", "2,3", "--rows", "256"]


def test_json(capsys):
    assert main(BASE + ["--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert len(rows) == 8 and list(rows[0]) == list(COLUMNS)
    assert err == ""


def test_csv_and_text(capsys):
    assert main(BASE + ["--csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = [line for line in out if line.startswith("# ")]
    lines = [line for line in out if not line.startswith("# ")]
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 9
    assert {h.split(":")[0] for h in header} == {"# source", "# label", "# weights", "# rows",
                                                  "# seed", "# rate_metric"}
    assert "# weights: 256 i.i.d. Gaussian rows" in header
    assert main(BASE + ["--rate-metric", "pooled_entropy"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split()[:3] == ["method", "rotation", "target_rate"] and len(text) == 9
    assert "pooled_entropy" in text[1]


@pytest.mark.parametrize("extra,match", [
    (["--methods", "awq"], "Unknown method"),
    (["--rotations", "spin"], "Unknown rotation"),
    (["--rates", "2,-1"], "positive"),
    (["--rate-metric", "bits"], "rate metric"),
    (["--device", "tpu"], "device"),
])
def test_bad_input_exits_2_with_one_line(capsys, extra, match):
    assert main(BASE + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("wfviz: error: ") and len(err.strip().splitlines()) == 1
    assert match in err


def test_real_weights_from_the_gguf(capsys):
    pytest.importorskip("gguf")
    from wfviz.weights import gguf_path

    try:
        gguf_path()
    except WfvizError:
        pytest.skip("the SmolLM2 GGUF is not installed")
    src = "bundle:smollm2-135m-wikitext2/15/gate_up"
    assert main(["curve", src, "--weights", "real", "--methods", "watersic", "--rotations",
                 "identity", "--rates", "4", "--csv"]) == 0
    out = capsys.readouterr().out
    assert "# weights: SmolLM2-135M-Instruct" in out and "# rows: 3072" in out
    # the real layer (gate and up stacked, 2 × 1536 rows) against its own Σ_X
    rows = [line for line in out.splitlines() if line.startswith("watersic")]
    assert len(rows) == 1


def test_real_weights_refused_where_there_are_none(capsys):
    code = main(["curve", "synthetic:ar1?n=8", "--weights", "real", "--rates", "4"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("wfviz: error: Real weights exist only for the bundled SmolLM2")
    assert err.count("\n") == 1
