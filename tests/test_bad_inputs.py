"""Hostile and malformed Σ_X files: the loader, the CLI and the app must answer with one sentence.

The committed corpus lives in ``tests/data/bad/`` (regenerate it with
``python tests/data/make_bad_corpus.py``); its ``MANIFEST.json`` says per file whether it must be
refused or accepted with a note. Files carrying a pickle payload that would act if unpickled are
built here at run time, inside each test's temporary directory.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from _apptest import SPIKED, no_pages_folder_mode, start  # noqa: F401  (a fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from wfviz.cli import main
from wfviz.covariance import Covariance
from wfviz.covariance_io import load_covariance
from wfviz.errors import WfvizError

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "data" / "bad"
MANIFEST = json.loads((BAD / "MANIFEST.json").read_text())
REFUSED = sorted(name for name, e in MANIFEST.items() if e["expect"] == "refuse")
ACCEPTED = sorted(name for name, e in MANIFEST.items() if e["expect"] == "accept")
PEAK_BYTES = 64 * 2**20  # every corpus file is < 64 KiB: loading one must not need more
SECONDS = 10.0


def _load_bounded(source, **kw):
    """Load under tracemalloc; return (Covariance or WfvizError, peak bytes, seconds)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        outcome = load_covariance(source, **kw)
    except WfvizError as exc:
        outcome = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return outcome, peak, time.perf_counter() - start


def _check_outcome(name, outcome):
    entry = MANIFEST[name]
    if entry["expect"] == "refuse":
        assert isinstance(outcome, WfvizError), f"{name} was accepted: {entry['why']}"
        message = str(outcome)
        assert "\n" not in message and "Traceback" not in message
        assert re.search(entry["match"], message, re.IGNORECASE), message
    else:
        assert isinstance(outcome, Covariance), f"{name} was refused: {outcome}"
        lam = outcome.eigenvalues
        assert lam.dtype == np.float64 and np.all(np.isfinite(lam)) and np.all(lam >= 0)
        assert np.all(np.diff(lam) <= 0)
        if entry["match"]:
            assert any(re.search(entry["match"], note, re.IGNORECASE) for note in outcome.notes), (
                outcome.notes)


def test_corpus_is_large_enough_small_and_matches_its_manifest():
    files = sorted(p.name for p in BAD.iterdir() if p.name != "MANIFEST.json")
    assert files == sorted(MANIFEST)
    assert len(REFUSED) >= 30 and len(ACCEPTED) >= 5
    assert sum(p.stat().st_size for p in BAD.iterdir()) < 2**20


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_loader_from_path_bounded(name):
    outcome, peak, seconds = _load_bounded(BAD / name)
    _check_outcome(name, outcome)
    assert peak < PEAK_BYTES, f"{name}: loading allocated {peak / 2**20:.0f} MiB"
    assert seconds < SECONDS


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_loader_from_upload_bytes_bounded(name):
    # the app hands the loader the uploaded bytes and the browser's file name
    outcome, peak, _ = _load_bounded((BAD / name).read_bytes(), name=name)
    _check_outcome(name, outcome)
    assert peak < PEAK_BYTES, f"{name}: loading allocated {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_cli_stats(name, capsys):
    code = main(["stats", str(BAD / name)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if MANIFEST[name]["expect"] == "refuse":
        assert code == 2 and out == ""
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("wfviz: error: "), err
    else:
        assert code == 0 and err == "", err
        match = MANIFEST[name]["match"]
        assert match is None or re.search(match, out, re.IGNORECASE), out


SUBPROCESS_CASES = ["huge_shape.npy", "st_header_len_huge.safetensors", "truncated.pt"]


def test_cli_subprocesses_exit_2_without_hanging():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {name: subprocess.Popen([sys.executable, "-m", "wfviz", "stats", str(BAD / name)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env, cwd=ROOT)
             for name in SUBPROCESS_CASES}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 2, (name, err)
            assert out == "" and "Traceback" not in err
            assert len(err.splitlines()) == 1 and err.startswith("wfviz: error: "), err
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


# --- pickle payloads that would create a marker file if anything ever unpickled them ---

class _OpenPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemPayload(_OpenPayload):
    def __reduce__(self):
        return (os.system, ("touch " + shlex.quote(self.marker),))


def _npy_object(payload) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([payload, 1.0], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _torch_dict(payload) -> bytes:
    buf = io.BytesIO()
    torch.save({"sigma": torch.eye(3, dtype=torch.float64), "extra": payload}, buf)
    return buf.getvalue()


def _torch_swapped_pickle(payload) -> bytes:
    """A genuine zip .pt whose data.pkl is replaced by the payload."""
    src = zipfile.ZipFile(io.BytesIO(_torch_dict(1.0)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps(payload, protocol=2)
            dst.writestr(info, data)
    return buf.getvalue()


def _npz_member(payload) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("sigma.npy", _npy_object(payload))
    return buf.getvalue()


EVIL_BUILDERS = {
    "raw_pickle.pt": lambda p: pickle.dumps(p, protocol=2),
    "raw_pickle.pth": lambda p: pickle.dumps(p, protocol=5),
    "dict_with_payload.pt": _torch_dict,
    "swapped_data_pkl.pt": _torch_swapped_pickle,
    "object_array.npy": _npy_object,
    "object_member.npz": _npz_member,
    "raw_pickle.npy": lambda p: pickle.dumps(p, protocol=2),
    "raw_pickle.npz": lambda p: pickle.dumps(p, protocol=2),
    "raw_pickle.safetensors": lambda p: pickle.dumps(p, protocol=2),
}
PAYLOADS = {"open": _OpenPayload, "system": _SystemPayload}


def test_payloads_are_live_when_unpickled_naively(tmp_path):
    """Control: the payloads below really would act, so their silence in the loader means it."""
    for kind, payload in PAYLOADS.items():
        marker = tmp_path / f"control-{kind}"
        pickle.loads(pickle.dumps(payload(marker)))
        assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("name", sorted(EVIL_BUILDERS))
def test_pickle_payload_never_runs(tmp_path, capsys, name, kind):
    marker = tmp_path / "marker"
    data = EVIL_BUILDERS[name](PAYLOADS[kind](marker))
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(WfvizError):
        load_covariance(path)
    with pytest.raises(WfvizError):
        load_covariance(data, name=name)
    assert main(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wfviz: error: ") and len(err.splitlines()) == 1
    assert not marker.exists(), f"{name}: the pickle payload ran"


# --- fuzzing: random and mutated bytes raise WfvizError or load as a valid Covariance ---

def _valid_files() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 8))
    sigma = a @ a.T / 8
    files = []
    for value in (sigma, np.array([3.0, 2.0, 0.5])):
        buf = io.BytesIO()
        np.save(buf, value)
        files.append(("f.npy", buf.getvalue()))
        buf = io.BytesIO()
        np.savez(buf, sigma=value)
        files.append(("f.npz", buf.getvalue()))
        files.append(("f.safetensors", safetensors.numpy.save({"sigma": value})))
        buf = io.BytesIO()
        torch.save(torch.from_numpy(value), buf)
        files.append(("f.pt", buf.getvalue()))
    return files


VALID = _valid_files()
EXTENSIONS = [".npy", ".npz", ".pt", ".pth", ".safetensors"]
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _load_any(data: bytes, name: str):
    try:
        cov = load_covariance(data, name=name)
    except WfvizError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    lam = cov.eigenvalues
    assert np.all(np.isfinite(lam)) and np.all(lam >= 0) and lam.size >= 1


@FUZZ
@given(ext=hst.sampled_from(EXTENSIONS), data=hst.binary(max_size=512))
def test_fuzz_random_bytes(ext, data):
    _load_any(data, "fuzz" + ext)


_MUTATION = hst.one_of(
    hst.tuples(hst.just("flip"), hst.integers(0, 2**16), hst.integers(1, 255)),
    hst.tuples(hst.just("cut"), hst.integers(0, 2**16), hst.just(0)),
    hst.tuples(hst.just("insert"), hst.integers(0, 2**16), hst.integers(0, 255)),
)


def _mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in mutations:
        i = pos % max(len(buf), 1)
        if kind == "flip" and buf:
            buf[i] ^= value
        elif kind == "cut":
            del buf[i:]
        elif kind == "insert":
            buf[i:i] = bytes([value])
    return bytes(buf)


@FUZZ
@given(index=hst.integers(0, len(VALID) - 1),
       mutations=hst.lists(_MUTATION, min_size=1, max_size=4))
def test_fuzz_mutated_valid_files(index, mutations):
    name, data = VALID[index]
    _load_any(_mutate(data, mutations), name)


# --- the app's upload path (sidebar uploader of pages/_ui.py), through AppTest ---

APP_REFUSED = ["truncated.npy", "huge_shape.npy", "object_array.npy", "indefinite.npy",
               "st_header_len_huge.safetensors", "npz_huge_shape.npz", "random_bytes.pt"]
APP_ACCEPTED = ["all_zero.npy", "n1_matrix.npy", "n1_vector.npy"]
DEGENERATE_PAGES = ["pages/covariance.py", "pages/waterfilling.py"]


def _app():
    at = start(src=SPIKED)
    at.radio(key="src_kind").set_value("uploaded").run()
    assert not at.exception, at.exception
    return at


def _upload(at, name: str, data: bytes):
    at.file_uploader(key="src_upload").set_value((name, data, "application/octet-stream"))
    return at.run()


@pytest.mark.usefixtures("no_pages_folder_mode")
def test_app_upload_refuses_bad_files_with_one_error(tmp_path):
    at = _app()
    marker = tmp_path / "marker"
    evil = ("evil.pt", pickle.dumps(_OpenPayload(marker), protocol=2))
    for name, data in [(n, (BAD / n).read_bytes()) for n in APP_REFUSED] + [evil]:
        with pytest.raises(WfvizError) as refused:
            load_covariance(data, name=name)
        _upload(at, name, data)
        assert not at.exception, (name, at.exception)
        errors = [e.value for e in at.error]
        assert any(str(refused.value) in e for e in errors), (name, errors)
    assert not marker.exists()


@pytest.mark.usefixtures("no_pages_folder_mode")
@pytest.mark.parametrize("name", APP_ACCEPTED)
def test_app_upload_accepts_degenerate_files(name):
    at = _upload(_app(), name, (BAD / name).read_bytes())
    assert at.session_state["wfviz_source"].startswith("upload:")
    for page in DEGENERATE_PAGES:
        at.switch_page(page).run()
        assert not at.exception, (name, page, at.exception)
        # a page may decline a degenerate Σ_X, but only with one sentence
        assert all("\n" not in e.value and "Traceback" not in e.value for e in at.error)
