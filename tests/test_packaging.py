"""A plain (non-editable) install: the wheel carries the app as data, `wfviz app` serves it,
and no top-level `app` or `pages` module lands in site-packages."""

import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtualenv with only the wheel installed; its dependencies come from ours."""
    tmp = tmp_path_factory.mktemp("pkg")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp / "dist"), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("wfviz-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=120)
    py = tmp / "venv" / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    env.pop("WFVIZ_DATA", None)
    return wheel, tmp / "venv", env


@pytest.mark.slow
def test_wheel_has_no_top_level_app_or_pages(installed):
    wheel, venv, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert not {"app.py", "pages"} & top
    assert any(n.endswith("data/share/wfviz/app.py") for n in names)
    # the Model page's shipped results and stored allocation inputs travel with the bundle
    grid = "data/share/wfviz/sample_covariances/smollm2-135m-wikitext2/model_grid/"
    assert any(n.endswith(grid + "results.json") for n in names)
    assert sum(grid + "points/" in n for n in names) == len(list(
        (ROOT / "sample_covariances/smollm2-135m-wikitext2/model_grid/points").glob("*.json")))
    assert any(n.endswith("smollm2-135m-wikitext2/allocation_costs.json") for n in names)
    site = next(venv.glob("lib/python*/site-packages"))
    assert not (site / "app.py").exists() and not (site / "pages").exists()


@pytest.mark.slow
def test_installed_wfviz_finds_its_bundle_and_serves_the_app(installed, tmp_path):
    _, venv, env = installed
    wfviz = venv / "bin" / "wfviz"
    out = subprocess.run([str(wfviz), "bundles"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "smollm2-135m-wikitext2" in out.stdout, out.stderr
    port = _free_port()
    server = subprocess.Popen([str(wfviz), "app", "--headless", "--port", str(port)], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the installed app did not answer its health check in 90 s")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_installed_app_renders_its_default_page(installed, tmp_path):
    _, venv, env = installed
    script = ("import wfviz, wfviz.launch as L\n"
              "assert 'site-packages' in wfviz.__file__, wfviz.__file__\n"
              "from streamlit.testing.v1 import AppTest\n"
              "at = AppTest.from_file(str(L.app_dir() / 'app.py'), default_timeout=120).run()\n"
              "assert not at.exception, at.exception\n"
              "print(at.title[0].value)\n")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Covariance" in out.stdout
