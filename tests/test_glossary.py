"""The glossary: complete, renderable, and every term defined in docs/theory.md."""

import re

import pytest
from _markdown import ROOT, is_defined, link_problems

from wfviz.errors import WfvizError
from wfviz.glossary import GLOSSARY, glossary_markdown

THEORY = ROOT / "docs" / "theory.md"

# The terms the project promised a newcomer (issue 13 §6 and the theory brief).
REQUIRED = (
    "Σ_X", "d_j", "SIC", "AM/GM", "reverse waterfilling", "water level θ", "WaterSIC", "GPTQ",
    "GPTQ-EC", "rotation", "Haar", "Hadamard", "rate metric", "log_cardinality",
    "column_entropy", "pooled_entropy", "coded_bits", "parametric_coded", "side information",
    "dead feature", "perplexity", "KL divergence", "sensitivity s_l", "bit budget",
)


def test_every_promised_term_is_there():
    assert [t for t in REQUIRED if t not in GLOSSARY] == []


@pytest.mark.parametrize("term", list(GLOSSARY))
def test_definition_is_short_plain_markdown(term):
    text = GLOSSARY[term]
    assert isinstance(text, str) and text.strip() == text and text
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z$(])", text)
    assert 1 <= len(sentences) <= 3, sentences
    assert len(re.findall(r"(?<!\\)\$", text)) % 2 == 0, "unbalanced $…$ math"
    assert "\n" not in text and "$$" not in text


@pytest.mark.parametrize("term", list(GLOSSARY))
def test_term_is_defined_in_theory_doc(term):
    assert is_defined(term, THEORY.read_text(encoding="utf-8")), (
        f"{term!r} is neither bold nor a heading in docs/theory.md")


def test_definition_check_can_fail():
    text = "# Notes\n\nThe **water level θ** rises.\n\n```\n**SIC** in code\n```\n"
    assert is_defined("water level θ", text) and is_defined("notes", text)
    assert not is_defined("SIC", text) and not is_defined("water", text)


def test_theory_doc_links_only_inside_the_repository():
    assert THEORY.exists()
    assert link_problems(THEORY) == []


def test_glossary_markdown_lists_terms_in_order():
    md = glossary_markdown()
    starts = [md.index(f"**{t}**: ") for t in GLOSSARY]
    assert starts == sorted(starts) and len(starts) == len(GLOSSARY)
    assert glossary_markdown(["GPTQ", "SIC"]).startswith("**GPTQ**: ")


def test_unknown_term_is_one_sentence():
    with pytest.raises(WfvizError, match=r"Unknown glossary term\(s\) 'nope'; choose from"):
        glossary_markdown(["SIC", "nope"])
