"""Reading the repository's Markdown for the documentation tests: links, bold terms, checks."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)", re.M)
_AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^>\s]+)>", re.I)
_BARE_URL = re.compile(r"(?:https?://|www\.)\S+", re.I)
_HTML_REF = re.compile(r"<(?:a|img)\b[^>]*\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_BOLD = re.compile(r"\*\*(.+?)\*\*", re.S)


def prose(text: str) -> str:
    """``text`` without fenced code blocks and code spans (links in code are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def prose_keep_code(text: str) -> str:
    """``text`` without fenced code blocks (bold code spans such as **`x`** stay)."""
    return _FENCE.sub("", text)


def link_targets(text: str) -> list[str]:
    """Every link or image target of Markdown ``text``: inline, reference, autolink, HTML, URL."""
    body = prose(text)
    targets = [m.group(1) for m in _LINK.finditer(body)]
    targets += _REF_DEF.findall(body) + _AUTOLINK.findall(body) + _HTML_REF.findall(body)
    rest = _HTML_REF.sub("", _AUTOLINK.sub("", _LINK.sub("", _REF_DEF.sub("", body))))
    targets += _BARE_URL.findall(rest)
    return targets


def heading_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_$]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(text: str) -> list[str]:
    return _HEADING.findall(prose(text))


def link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Why each link of the Markdown file ``path`` is not a link to an existing file of the repo."""
    text = path.read_text(encoding="utf-8")
    problems = []
    for target in link_targets(text):
        where, _, anchor = target.partition("#")
        if re.match(r"^[a-z][a-z0-9+.-]*:|^//|^www\.", target, re.I):
            problems.append(f"{target}: points outside the repository")
        elif where.startswith("/") or re.match(r"^[a-z]:\\", where, re.I):
            problems.append(f"{target}: absolute path")
        elif not where:
            if heading_slug(anchor) not in {heading_slug(h) for h in headings(text)}:
                problems.append(f"{target}: no heading with this anchor")
        else:
            dest = (path.parent / where).resolve()
            if not dest.is_relative_to(root):
                problems.append(f"{target}: leaves the repository")
            elif not dest.exists():
                problems.append(f"{target}: no such file")
    return problems


def _plain(term: str) -> str:
    text = re.sub(r"\s+", " ", re.sub(r"[`$\\]", "", term))  # a line break is a space
    return text.strip().rstrip(".:;,").strip().lower()


def defined_terms(text: str) -> set[str]:
    """Normalised bold phrases and headings of ``text``: where a term counts as defined."""
    body = prose_keep_code(text)
    return {_plain(b) for b in _BOLD.findall(body)} | {_plain(h) for h in headings(text)}


def is_defined(term: str, text: str) -> bool:
    """Whether ``term`` is a bold phrase of ``text``, or a whole word of one of its headings."""
    plain = _plain(term)
    if plain in defined_terms(text):
        return True
    pattern = rf"(?<![\w-]){re.escape(plain)}(?![\w-])"
    return any(re.search(pattern, _plain(h)) for h in headings(text))
