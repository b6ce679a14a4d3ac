"""Regenerate (or check) the CLI examples of README.md from real output.

An example is a line ``<!-- example: wfviz ARGS -->`` followed by a fenced block; the block
holds ``$ wfviz ARGS`` and what the command prints. ``python scripts/readme_examples.py``
rewrites every block from a fresh run; ``tests/test_readme.py`` runs the same commands and fails
when a block has drifted.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
PATTERN = re.compile(r"<!-- example: (wfviz [^>]*?) -->\n```text\n(.*?)```", re.S)


def run(command: str) -> str:
    """What ``wfviz ARGS`` prints on stdout, run in this process."""
    from wfviz.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(shlex.split(command)[1:])
    if code != 0:
        raise SystemExit(f"{command!r} exited with {code}")
    return out.getvalue()


def examples(text: str) -> list[tuple[str, str]]:
    """``(command, block)`` of every example in ``text``."""
    return [(m.group(1), m.group(2)) for m in PATTERN.finditer(text)]


def block(command: str, output: str) -> str:
    return f"$ {command}\n{output.rstrip()}\n"


def main() -> None:
    text = README.read_text(encoding="utf-8")

    def fresh(m: re.Match) -> str:
        command = m.group(1)
        print(f"running {command}", file=sys.stderr)
        return f"<!-- example: {command} -->\n```text\n{block(command, run(command))}```"

    README.write_text(PATTERN.sub(fresh, text), encoding="utf-8")


if __name__ == "__main__":
    main()
