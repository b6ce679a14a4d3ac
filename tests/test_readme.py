"""The README's CLI examples are what the commands print today (numbers to 4 significant
digits: BLAS builds may differ in the last ones)."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from readme_examples import README, block, examples, run  # noqa: E402

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def _shape(text: str) -> tuple[str, list[float]]:
    return NUMBER.sub("#", text), [float(x) for x in NUMBER.findall(text)]


CASES = examples(README.read_text(encoding="utf-8"))


def test_the_readme_has_cli_examples():
    assert len(CASES) >= 3
    assert {c.split()[1] for c, _ in CASES} >= {"stats", "bundles", "curve"}


@pytest.mark.parametrize("command,shown", CASES, ids=[c for c, _ in CASES])
def test_readme_example_matches_the_command(command, shown):
    shape, values = _shape(shown)
    fresh_shape, fresh = _shape(block(command, run(command)))
    assert fresh_shape == shape, (f"{command}: the README block drifted; run "
                                  "python scripts/readme_examples.py")
    assert fresh == pytest.approx(values, rel=1e-3, abs=1e-9), command
