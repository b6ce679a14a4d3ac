"""The example notebook runs top to bottom on the library alone and draws its two figures."""

import json
from pathlib import Path

import plotly.graph_objects as go
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "examples" / "rate_allocation.ipynb"


@pytest.mark.slow
def test_example_notebook_executes_and_draws_the_figures():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    namespace: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), namespace)  # noqa: S102
    vessel, dr = namespace["vessel"], namespace["dr"]
    assert isinstance(vessel, go.Figure) and isinstance(dr, go.Figure)
    assert any(t.x is not None and len(t.x) for t in vessel.data)
    names = [t.name for t in dr.data]
    assert "IT limit (exact waterfilling)" in names and any("watersic" in n for n in names)
    assert len(namespace["points"]) == 12
