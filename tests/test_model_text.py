"""Calibration and evaluation spans: placed, checked, never overlapping."""

import pytest

from tests._tiny_llm import one_torch_thread, tiny_tokenizer, write_text  # noqa: F401
from wfviz.errors import WfvizError
from wfviz.model_text import TokenSpan, load_texts, plan_spans


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_one_text_spans_follow_each_other(tmp_path, tokenizer):
    text = write_text(tmp_path / "t.txt", 1000)
    got = load_texts(tokenizer, text=text, calib_tokens=300, eval_tokens=250, seq_len=128)
    c, e = got.spans.calibration, got.spans.evaluation
    assert (c.start, c.stop, e.start, e.stop) == (0, 300, 300, 550)
    assert not c.overlaps(e) and c.text["sha256"] == e.text["sha256"]
    assert [w.numel() for w in got.calibration] == [128, 128, 44]
    assert [w.numel() for w in got.evaluation] == [128, 122]
    ids = tokenizer(text.read_text(), add_special_tokens=False)["input_ids"]
    assert sum((w.tolist() for w in got.calibration), []) == ids[:300]
    assert sum((w.tolist() for w in got.evaluation), []) == ids[300:550]
    record = got.spans.to_dict()
    assert record["seq_len"] == 128 and record["windows"] == {"calibration": 3, "evaluation": 2}
    assert record["evaluation"]["text"]["name"] == "t.txt"
    assert len(record["calibration"]["text"]["sha256"]) == 64


def test_two_texts_and_eval_start(tmp_path, tokenizer):
    a, b = write_text(tmp_path / "a.txt", 400, seed=1), write_text(tmp_path / "b.txt", 400, seed=2)
    got = load_texts(tokenizer, calib_text=a, eval_text=b, calib_tokens=300, eval_tokens=300,
                     seq_len=100)
    assert got.spans.evaluation.start == 0 and got.spans.evaluation.text["name"] == "b.txt"
    one = load_texts(tokenizer, text=a, calib_tokens=100, eval_tokens=100, eval_start=250,
                     seq_len=50)
    assert one.spans.evaluation.start == 250 and len(one.evaluation) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"calib_tokens": 300, "eval_tokens": 300}, "has only 400 tokens"),
    ({"calib_tokens": 100, "eval_tokens": 100, "eval_start": 50}, "overlap"),
    ({"calib_tokens": 0, "eval_tokens": 100}, "--calib-tokens >= 1"),
    ({"calib_tokens": 10, "eval_tokens": 1}, "--eval-tokens >= 2"),
])
def test_bad_spans(tmp_path, tokenizer, kwargs, message):
    text = write_text(tmp_path / "t.txt", 400)
    with pytest.raises(WfvizError, match=message):
        load_texts(tokenizer, text=text, seq_len=64, **kwargs)


def test_same_file_twice_is_one_text_and_bad_mix(tmp_path, tokenizer):
    text = write_text(tmp_path / "t.txt", 400)
    got = load_texts(tokenizer, calib_text=text, eval_text=text, calib_tokens=10, eval_tokens=10)
    assert got.spans.evaluation.start == 10  # the same bytes: evaluation after calibration
    with pytest.raises(WfvizError, match="overlap"):
        load_texts(tokenizer, calib_text=text, eval_text=text, calib_tokens=10, eval_tokens=10,
                   eval_start=5)
    with pytest.raises(WfvizError, match="not both"):
        load_texts(tokenizer, text=text, eval_text=text, calib_tokens=10, eval_tokens=10)
    with pytest.raises(WfvizError, match="Cannot read"):
        load_texts(tokenizer, text=tmp_path / "missing.txt", calib_tokens=10, eval_tokens=10)


def test_overlap_is_per_text():
    a, b = {"sha256": "a"}, {"sha256": "b"}
    assert not TokenSpan(a, 0, 10).overlaps(TokenSpan(b, 0, 10))
    assert plan_spans(a, b, calib_tokens=10, eval_tokens=10).evaluation.start == 0
