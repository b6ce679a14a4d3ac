import json
import math
import subprocess
import sys

import numpy as np
import pytest

from wfviz.cli import main
from wfviz.covariance_io import save_covariance

ROTATION_NAMES = {"identity", "haar", "hadamard", "eigenbasis", "act_order"}


def run(capsys, *argv):
    code = main(["stats", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output(capsys):
    code, out, err = run(capsys, "synthetic:spiked?n=64&seed=1", "--json")
    assert code == 0 and err == ""
    stats = json.loads(out)
    assert stats["n"] == 64
    assert set(stats["gap_bits"]) == ROTATION_NAMES
    assert all(isinstance(v, float) for v in stats["gap_bits"].values())
    assert stats["source_id"].startswith("synthetic:spiked?n=64&seed=1&basis=native&n_spikes=4")


def test_json_maps_infinities_to_null_for_singular_eigenvalues_file(tmp_path, capsys):
    path = save_covariance(tmp_path / "eig.npy", np.array([3.0, 1.0, 0.0]))
    code, out, _ = run(capsys, str(path), "--json")
    stats = json.loads(out)
    assert code == 0
    assert stats["condition_number"] is None and stats["log2_gm_eigenvalue"] is None
    assert stats["gap_bits"]["identity"] is None  # needs the full matrix: said in the notes
    assert stats["gap_bits"]["eigenbasis"] == pytest.approx(0.5 * math.log2(2 / math.sqrt(3)))
    assert stats["dead_features"] is None and stats["notes"]


def test_table_output_and_damping(capsys):
    code, out, _ = run(capsys, "synthetic:ar1?n=32&rho=0.5", "--damping", "0.01")
    assert code == 0
    assert out.splitlines()[0].startswith("source")
    for title in ("condition number", "effective rank", "hadamard", "act_order"):
        assert title in out
    code, out_json, _ = run(capsys, "synthetic:ar1?n=32&rho=0.5", "--damping", "0.01", "--json")
    assert json.loads(out_json)["damping"] == 0.01


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["synthetic:nope?n=4"], "choose one of powerlaw"),
        (["missing.npy"], "not found"),
        (["synthetic:powerlaw?n=4", "--damping", "-1"], "Damping"),
        (["synthetic:powerlaw?n=4", "--damping", "abc"], "invalid float"),
        ([], "required"),
    ],
)
def test_errors_are_one_line_and_exit_2(capsys, argv, match):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("wfviz: error: ") and err.count("\n") == 1
    assert match in err


def test_corrupt_file_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\xff" * 64)
    code, _, err = run(capsys, str(path))
    assert code == 2 and err.startswith("wfviz: error: ") and "Traceback" not in err


def test_module_entry_point_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "wfviz", "stats", "synthetic:powerlaw?n=16&alpha=2", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 16


def test_help_and_bundles_do_not_import_torch():
    """`wfviz --help` answers fast; a command imports torch only if it uses it."""
    # CPU time, not wall time: the bound must hold on a loaded machine too
    code = ("import sys, time; t = time.process_time()\n"
            "from wfviz.cli import main\n"
            "for argv in (['--help'], ['bundles']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print(time.process_time() - t)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 1.0  # about 0.1 s
