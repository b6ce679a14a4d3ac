"""The Markdown docs: links stay inside the repository, and theory.md's checks still hold."""

import contextlib
import io
import re

import pytest
from _markdown import ROOT, link_problems, link_targets

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

THEORY = ROOT / "docs" / "theory.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# ≈ in theory.md promises agreement "up to sampling noise of about 0.02".
APPROX_TOL = 0.02
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(path):
    assert link_problems(path) == []


def test_link_check_catches_what_it_should(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "there.md").write_text("# Here\n")
    page = root / "docs" / "page.md"
    page.write_text(
        "# Top\n[ok](there.md) [ok](#top) [ok](there.md#here) `[code](/etc/x)`\n"
        "[up](../../outside.md) [abs](/etc/passwd) [web](https://example.org) "
        "[gone](missing.md) [anchor](#nowhere) <http://example.org> www.example.org\n"
        '<a href="http://x.y">x</a>\n\n[ref]: ../../escape.md\n'
    )
    flagged = {p.split(": ")[0] for p in link_problems(page, root)}
    assert flagged == {"../../outside.md", "/etc/passwd", "https://example.org", "missing.md",
                       "#nowhere", "http://example.org", "www.example.org", "http://x.y",
                       "../../escape.md"}
    assert "[code](/etc/x)" not in " ".join(link_targets(page.read_text()))


def _checks() -> list[tuple[str, str, str]]:
    """(code, comparison, expected) for every checked command of theory.md."""
    text = THEORY.read_text(encoding="utf-8")
    found = []
    for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        lines = block.rstrip("\n").split("\n")
        if lang == "bash":
            for cmd, out in zip(lines, lines[1:], strict=False):
                m = re.fullmatch(r'python -c "(.*)"', cmd)
                if m:
                    shown = re.fullmatch(r"# prints(:| ≈) (.*)", out)
                    assert shown, f"no '# prints' line under {cmd}"
                    found.append((m.group(1), shown.group(1).strip(), shown.group(2)))
        elif lang == "python":
            m = re.fullmatch(r"# prints(:| ≈) (.*)", lines[-1])
            assert m, "a python block of theory.md must end with its '# prints' line"
            found.append(("\n".join(lines[:-1]), m.group(1).strip(), m.group(2)))
    return found


CHECKS = _checks()


def test_theory_doc_has_its_checks():
    assert len(CHECKS) >= 15
    assert {kind for _, kind, _ in CHECKS} == {":", "≈"}


@pytest.mark.parametrize("code, kind, expected", CHECKS,
                         ids=[f"check{i}" for i in range(len(CHECKS))])
def test_theory_doc_check_still_holds(code, kind, expected):
    # Shown inside bash double quotes: no quote, dollar or backtick may be in the one-liners.
    assert not re.search(r'["$`]', code) or "\n" in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/theory.md", "exec"), {"__name__": "theory_doc_check"})
    got = out.getvalue().strip()
    if kind == ":":
        assert got == expected
        return
    assert _NUMBER.sub("#", got) == _NUMBER.sub("#", expected), (got, expected)
    pairs = zip(map(float, _NUMBER.findall(got)), map(float, _NUMBER.findall(expected)),
                strict=True)
    assert all(abs(g - e) <= APPROX_TOL for g, e in pairs), (got, expected)
