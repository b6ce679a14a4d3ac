"""Helpers shared by the AppTest page tests: start the app, read Plotly figures, a toy bundle."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
SPIKED = "synthetic:spiked?n=256&seed=0&basis=native&n_spikes=4&spike_scale=1000.0"
if str(ROOT) not in sys.path:  # for `import pages._ui` before app.py has run
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def no_pages_folder_mode(monkeypatch):
    """Run app.py on every AppTest rerun, as the real server does after its first session.

    AppTest resets ``PagesManager.uses_pages_directory`` before each run, and because the app
    keeps its pages in a folder named ``pages/`` Streamlit would then rerun the current page
    file alone (its pre-``st.navigation`` mode), without the sidebar that app.py builds.
    """
    init = PagesManager.__init__

    def init_without_pages_folder(self, *args, **kwargs):
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init_without_pages_folder)


@pytest.fixture
def spiked_default(monkeypatch):
    """Make the small spiked Σ_X the default source instead of the shipped n = 1536 layer,
    whose statistics take seconds to compute and are recomputed for every test."""
    import pages._ui

    monkeypatch.setattr(pages._ui, "default_source", lambda: SPIKED)


def start(src: str | None = None, page: str | None = None) -> AppTest:
    """Run the app once (optionally with ``?src=``), then open ``page``; no exception allowed."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    if src is not None:
        at.query_params["src"] = src
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def figure(at: AppTest, key: str) -> dict:
    """The Plotly JSON of the chart created with ``key``."""
    for chart in at.get("plotly_chart"):
        if chart.proto.id.endswith(f"-{key}"):
            return json.loads(chart.proto.spec)
    raise AssertionError(f"no plotly chart with key {key!r}")


def array(value) -> np.ndarray:
    """Decode a Plotly array (plotly >= 6 sends base64 typed arrays)."""
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), value["dtype"])
        shape = value.get("shape")
        return out.reshape([int(k) for k in str(shape).split(",")]) if shape else out
    return np.asarray(value, dtype=np.float64)


def trace(fig: dict, name: str) -> dict:
    """The trace called ``name``."""
    for t in fig["data"]:
        if t.get("name") == name:
            return t
    raise AssertionError(f"no trace {name!r} in {[t.get('name') for t in fig['data']]}")


def metric(at: AppTest, label: str) -> str:
    """The value shown by the metric whose label is ``label``."""
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"no metric {label!r} in {[m.label for m in at.metric]}")


def npy_bytes(array_like) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array_like))
    return buf.getvalue()


def write_toy_bundle(root: Path, *, tokens: int = 500) -> Path:
    """A 3-block bundle (n = 16 or 24) whose block 1 is stored in full."""
    from wfviz.collect import LayerStatistics, write_bundle

    rng = np.random.default_rng(0)
    dims = {"qkv": 16, "o": 16, "gate_up": 16, "down": 24}
    sigmas = {}
    for block in range(3):
        for name, n in dims.items():
            x = rng.standard_normal((64, n)) * np.exp(rng.normal(0, 1, n))
            sigmas[(block, name)] = x.T @ x / 64
    return write_bundle(root / "toy", LayerStatistics(sigmas, tokens=tokens),
                        provenance={"model": {"label": "Toy"}}, full_blocks=[1], progress=False)
