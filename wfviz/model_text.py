"""Calibration and evaluation tokens of a whole-model run: two spans that never overlap.

By default one text gives both: calibration from its first token, evaluation from the span right
after it (or from ``eval_start``). Two different texts may be given instead. Either way the spans
are recorded as token offsets with the window length and the text's sha256, and cut into
non-overlapping windows of ``seq_len`` tokens (each an independent forward pass, no overlap, no
stride): the evaluation of a window of ``L`` tokens predicts its last ``L − 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .collect import read_text, token_windows, tokenize
from .errors import WfvizError


@dataclass(frozen=True)
class TokenSpan:
    """Tokens ``[start, start + tokens)`` of one tokenized text.

    Attributes
    ----------
    text : dict
        The text's provenance: ``name``, ``sha256``, ``bytes`` (from ``read_text``).
    start, tokens : int
        Token offset and length of the span.
    """

    text: dict
    start: int
    tokens: int

    @property
    def stop(self) -> int:
        return self.start + self.tokens

    def overlaps(self, other: TokenSpan) -> bool:
        """Whether both spans share a token of the same text.

        Examples
        --------
        >>> a, b = TokenSpan({"sha256": "t"}, 0, 10), TokenSpan({"sha256": "t"}, 10, 5)
        >>> a.overlaps(b), a.overlaps(TokenSpan({"sha256": "t"}, 9, 5))
        (False, True)
        """
        return (self.text.get("sha256") == other.text.get("sha256")
                and self.start < other.stop and other.start < self.stop)

    def to_dict(self) -> dict:
        return {"text": dict(self.text), "start": self.start, "tokens": self.tokens}


@dataclass(frozen=True)
class SpanPlan:
    """The calibration and evaluation spans and the window length of a run.

    Examples
    --------
    >>> t = {"name": "wiki.test.raw", "sha256": "ab"}
    >>> p = SpanPlan(TokenSpan(t, 0, 4096), TokenSpan(t, 4096, 2048), 2048)
    >>> p.to_dict()["evaluation"]["start"], p.windows("evaluation")
    (4096, 1)
    """

    calibration: TokenSpan
    evaluation: TokenSpan
    seq_len: int

    def windows(self, role: str) -> int:
        span = self.calibration if role == "calibration" else self.evaluation
        return -(-span.tokens // self.seq_len)

    def to_dict(self) -> dict:
        return {"calibration": self.calibration.to_dict(),
                "evaluation": self.evaluation.to_dict(), "seq_len": self.seq_len,
                "windows": {"calibration": self.windows("calibration"),
                            "evaluation": self.windows("evaluation")}}


@dataclass(frozen=True)
class ModelTexts:
    """The spans and their token windows (1-D LongTensors, on the CPU)."""

    spans: SpanPlan
    calibration: tuple
    evaluation: tuple


def plan_spans(calib_text: dict, eval_text: dict, *, calib_tokens: int, eval_tokens: int,
               seq_len: int = 2048, available=None, eval_start: int | None = None) -> SpanPlan:
    """Place the two spans and check them: positive sizes, inside the texts, no overlap.

    Parameters
    ----------
    calib_text, eval_text : dict
        Provenance of the texts (``sha256`` decides whether they are the same text).
    calib_tokens, eval_tokens : int
        Span lengths; the evaluation needs at least 2 tokens (one prediction).
    seq_len : int
        Window length.
    available : int or (int, int), optional
        Tokens in the text(s), to check the spans fit; ``(calib, eval)`` for two texts.
    eval_start : int, optional
        Offset of the evaluation span; default: right after the calibration span when both
        come from one text, else 0.

    Raises
    ------
    WfvizError
        Bad sizes, spans past the end of their text, or overlapping spans.

    Examples
    --------
    >>> t = {"sha256": "ab"}
    >>> plan_spans(t, t, calib_tokens=10, eval_tokens=5, seq_len=4).evaluation.start
    10
    >>> plan_spans(t, t, calib_tokens=10, eval_tokens=5, eval_start=8)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    wfviz.errors.WfvizError: The calibration tokens [0, 10) and the evaluation tokens [8, 13) ...
    """
    if calib_tokens < 1 or eval_tokens < 2 or seq_len < 2:
        raise WfvizError(f"Need --calib-tokens >= 1, --eval-tokens >= 2 and --seq-len >= 2, got "
                         f"{calib_tokens}, {eval_tokens} and {seq_len}.")
    same = calib_text.get("sha256") == eval_text.get("sha256")
    if eval_start is None:
        eval_start = calib_tokens if same else 0
    if eval_start < 0:
        raise WfvizError(f"--eval-start must be >= 0, got {eval_start}.")
    plan = SpanPlan(TokenSpan(dict(calib_text), 0, calib_tokens),
                    TokenSpan(dict(eval_text), eval_start, eval_tokens), seq_len)
    if plan.calibration.overlaps(plan.evaluation):
        c, e = plan.calibration, plan.evaluation
        raise WfvizError(f"The calibration tokens [{c.start}, {c.stop}) and the evaluation tokens "
                         f"[{e.start}, {e.stop}) of {c.text.get('name', 'the text')} overlap; "
                         "evaluate on tokens the calibration did not see (leave --eval-start "
                         "unset, or use two different texts).")
    if available is not None:
        _check_available(plan, available if isinstance(available, tuple)
                         else (available, available))
    return plan


def _check_available(plan: SpanPlan, available: tuple[int, int]) -> None:
    for span, have, what in ((plan.calibration, available[0], "calibration"),
                             (plan.evaluation, available[1], "evaluation")):
        if span.stop > have:
            raise WfvizError(f"The text {span.text.get('name', '')} has only {have} tokens but "
                             f"the {what} span ends at token {span.stop}; use a longer text or "
                             "fewer --calib-tokens/--eval-tokens.")


def load_texts(tokenizer, *, text=None, calib_text=None, eval_text=None, calib_tokens: int,
               eval_tokens: int, seq_len: int = 2048, eval_start: int | None = None) -> ModelTexts:
    """Read, tokenize and cut the calibration and evaluation spans into windows.

    Give ``text`` (one text, both spans) or both ``calib_text`` and ``eval_text``.

    Raises
    ------
    WfvizError
        A missing or unreadable text, too few tokens, overlapping spans, or a wrong mix of
        ``text``/``calib_text``/``eval_text``.

    Examples
    --------
    >>> load_texts(None, calib_tokens=1, eval_tokens=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    wfviz.errors.WfvizError: Give --text FILE, or both --calib-text and --eval-text...
    """
    if (text is None) == (calib_text is None and eval_text is None) \
            or (text is None and (calib_text is None or eval_text is None)):
        raise WfvizError("Give --text FILE, or both --calib-text and --eval-text (not both "
                         "forms).")
    if text is not None:
        body, info = read_text(text)
        plan = plan_spans(info, info, calib_tokens=calib_tokens, eval_tokens=eval_tokens,
                          seq_len=seq_len, eval_start=eval_start)
        ids = tokenize(tokenizer, body, max(plan.calibration.stop, plan.evaluation.stop))
        calib_ids = eval_ids = ids
        available = (len(ids), len(ids))
    else:
        c_body, c_info = read_text(calib_text)
        e_body, e_info = read_text(eval_text)
        plan = plan_spans(c_info, e_info, calib_tokens=calib_tokens, eval_tokens=eval_tokens,
                          seq_len=seq_len, eval_start=eval_start)
        calib_ids = tokenize(tokenizer, c_body, plan.calibration.stop)
        eval_ids = tokenize(tokenizer, e_body, plan.evaluation.stop)
        available = (len(calib_ids), len(eval_ids))
    _check_available(plan, available)
    return ModelTexts(spans=plan,
                      calibration=tuple(_windows(calib_ids, plan.calibration, seq_len)),
                      evaluation=tuple(_windows(eval_ids, plan.evaluation, seq_len)))


def _windows(ids, span: TokenSpan, seq_len: int) -> list[torch.Tensor]:
    return token_windows(ids, span.tokens, seq_len, start=span.start)
