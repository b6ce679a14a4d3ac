"""Perplexity and KL divergence of a causal LM on token windows, in bounded memory.

Each window of ``L`` tokens is one forward pass that predicts its last ``L − 1`` tokens; the NLL
is the mean over every predicted token of every window (so windows of different lengths weigh
by their tokens), ``ppl = exp(nll)``. The KL divergence is the mean over the same tokens of
``KL(p_ref ‖ p_model)`` between the next-token distributions of a reference model and this one.

Memory. The logits of a window are never materialised whole: the final hidden states go
through the LM head a chunk of positions at a time (``chunk_tokens × vocab`` floats). The
reference distributions are needed for every evaluation token (32 768 × 49 152 floats is
6.4 GB in float32), so they are not held in RAM: either a reference *model* recomputes them
window by window (one more forward pass per window, no disk), or a :class:`LogProbStore` keeps
them on disk in float16, one ``.npy`` per window (2 bytes × vocabulary per token: 3.2 GB for
32 768 tokens of a 49 152-word vocabulary), read back a chunk at a time through a memory map.
The grid runner uses the store: a grid evaluates many points against one reference, and reading
a window back costs far less than recomputing it. float16 keeps log-probabilities to 2⁻¹¹
relative; the stored rows are renormalised (log-softmax again) before use, so the KL is that of
a proper distribution and is 0 for the reference against itself up to that rounding.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .collect import cancel_hooks
from .device import forward_oom_as_error
from .errors import Cancelled, WfvizError
from .model_cache import atomic_save_npy, atomic_write_text

CHUNK_TOKENS = 256
"""Positions whose logits are computed at once (``CHUNK_TOKENS × vocab`` float32 each)."""

STORE_FORMAT = 1
_SPECIAL_HEAD_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass(frozen=True)
class ModelEval:
    """Perplexity (and KL) of a model on a set of windows.

    Attributes
    ----------
    nll : float
        Mean negative log-likelihood per predicted token (nats).
    ppl : float
        ``exp(nll)``.
    tokens : int
        Predicted tokens: ``Σ (L − 1)`` over the windows.
    kl : float or None
        Mean per-token ``KL(reference ‖ model)`` in nats, None without a reference.
    windows : int
        Number of windows.
    seq_len : int
        Longest window.
    window_nll : tuple of float
        Mean NLL of each window (for paired comparisons between models).
    time_s : float
        Wall time of the evaluation.
    """

    nll: float
    ppl: float
    tokens: int
    kl: float | None
    windows: int
    seq_len: int
    window_nll: tuple
    time_s: float

    def to_dict(self) -> dict:
        """JSON-ready fields (non-finite numbers as None).

        Examples
        --------
        >>> ModelEval(1.0, math.e, 3, None, 1, 4, (1.0,), 0.1).to_dict()["kl"] is None
        True
        """
        from .stats import json_safe

        return json_safe(asdict(self))


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _plain_head(model):
    """The LM head as an ``nn.Linear`` when logits are just ``head(hidden)``, else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    special = any(getattr(cfg, k, None) not in (None, 0, 1, 1.0) for k in _SPECIAL_HEAD_KEYS)
    return head if isinstance(head, torch.nn.Linear) and not special else None


def window_log_probs(model, ids: torch.Tensor):
    """A function ``rows(s, e)`` giving the float32 log-probabilities that positions ``s..e−1``
    of the window assign to the next token (shape ``(e − s, vocab)``).

    The forward pass runs once; with a plain linear LM head only the final hidden states are
    kept and each call applies the head to its rows. Other heads (soft-capped or scaled logits)
    go through the model's own forward and keep the window's logits.

    Examples
    --------
    >>> from transformers import LlamaConfig, LlamaForCausalLM  # doctest: +SKIP
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=1, num_attention_heads=2, vocab_size=50)).eval()  # doctest: +SKIP
    >>> window_log_probs(m, torch.arange(8))(0, 3).shape  # doctest: +SKIP
    torch.Size([3, 50])
    """
    batch = ids.reshape(1, -1).to(_device(model))
    head = _plain_head(model)
    with torch.inference_mode():
        if head is not None:
            base = getattr(model, "base_model", model)
            rows = base(input_ids=batch, use_cache=False)[0][0]
        else:
            rows = model(input_ids=batch, use_cache=False).logits[0]

    def log_probs(s: int, e: int) -> torch.Tensor:
        with torch.inference_mode():
            logits = head(rows[s:e]) if head is not None else rows[s:e]
            return torch.log_softmax(logits.float(), dim=-1)

    return log_probs


class LogProbStore:
    """A reference model's next-token log-probabilities on disk: float16, one file per window.

    ``window_0000.npy`` … hold ``(L − 1, vocab)`` rows; ``meta.json``, written last, marks the
    store complete and holds the reference's own :class:`ModelEval` and the window lengths.

    Parameters
    ----------
    directory : path
        The store's directory (one per model, text span and window length: the caller keys it).
    """

    def __init__(self, directory):
        self.directory = Path(directory)

    @property
    def meta_path(self) -> Path:
        return self.directory / "meta.json"

    def window_path(self, i: int) -> Path:
        return self.directory / f"window_{i:04d}.npy"

    def meta(self) -> dict | None:
        """The completed store's metadata, or None while it is incomplete."""
        if not self.meta_path.is_file():
            return None
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def matches(self, windows) -> bool:
        """Whether the store is complete and was written for windows of these lengths."""
        meta = self.meta()
        return (meta is not None and meta.get("format") == STORE_FORMAT
                and meta.get("window_tokens") == [int(w.numel()) for w in windows])

    def reader(self, i: int, ids: torch.Tensor):
        """``rows(s, e)`` for window ``i``, like :func:`window_log_probs`, read from disk."""
        path = self.window_path(i)
        try:
            stored = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise WfvizError(f"The reference log-probabilities {path} are unreadable; delete "
                             f"{self.directory} and run again to rebuild them.") from exc
        if stored.shape[0] != ids.numel() - 1:
            raise WfvizError(f"The reference store {self.directory} holds {stored.shape[0] + 1} "
                             f"tokens for window {i}, not {ids.numel()}; delete it and run again.")

        def log_probs(s: int, e: int) -> torch.Tensor:
            rows = torch.from_numpy(np.array(stored[s:e], dtype=np.float32))
            return torch.log_softmax(rows.clamp_min_(-1e4), dim=-1)  # renormalise fp16 rows

        return log_probs


def evaluate_model(model, windows, *, reference=None, progress=None, cancel=None,
                   chunk_tokens: int = CHUNK_TOKENS) -> ModelEval:
    """NLL, perplexity and (with a reference) KL divergence of ``model`` on token windows.

    Parameters
    ----------
    model : transformers causal LM
        In eval mode, on its device.
    windows : sequence of 1-D LongTensor
        Token windows; each is one forward pass (batch 1) predicting its last ``L − 1`` tokens.
    reference : torch.nn.Module or LogProbStore, optional
        The reference for the KL: a model (recomputed per window) or a completed store written
        by :func:`reference_store` for the same windows.
    progress : callable, optional
        ``progress(fraction, message)`` after each window.
    cancel : callable, optional
        Polled before every decoder block and every chunk; True raises ``Cancelled``.
    chunk_tokens : int
        Positions whose logits are computed at once.

    Returns
    -------
    ModelEval

    Examples
    --------
    >>> from transformers import LlamaConfig, LlamaForCausalLM  # doctest: +SKIP
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=1, num_attention_heads=2, vocab_size=50)).eval()  # doctest: +SKIP
    >>> ev = evaluate_model(m, [torch.arange(20)], reference=m)  # doctest: +SKIP
    >>> ev.tokens, abs(ev.kl) < 1e-6  # doctest: +SKIP
    (19, True)
    """
    if isinstance(reference, LogProbStore) and not reference.matches(windows):
        raise WfvizError(f"The reference store {reference.directory} is incomplete or was written "
                         "for other windows; rebuild it with reference_store().")
    return _evaluate(model, windows, reference, None, progress, cancel, chunk_tokens)


def _reference_rows(reference, i: int, ids: torch.Tensor):
    if reference is None:
        return None
    if isinstance(reference, LogProbStore):
        return reference.reader(i, ids)
    if isinstance(reference, torch.nn.Module):
        return window_log_probs(reference, ids)
    raise WfvizError(f"reference must be a model or a LogProbStore, got "
                     f"{type(reference).__name__}.")


def _evaluate(model, windows, reference, sink, progress, cancel, chunk_tokens) -> ModelEval:
    windows = list(windows)
    if not windows or all(w.numel() < 2 for w in windows):
        raise WfvizError("No window has 2 tokens or more, so nothing can be predicted; give more "
                         "evaluation tokens.")
    start = time.perf_counter()
    nll_sum = kl_sum = 0.0
    tokens = 0
    window_nll = []
    with cancel_hooks(model, cancel), torch.inference_mode(), forward_oom_as_error():
        for i, ids in enumerate(windows):
            n = ids.numel() - 1
            if n < 1:
                continue
            own = window_log_probs(model, ids)
            ref = _reference_rows(reference, i, ids)
            rows = None
            nll_w = 0.0
            for s in range(0, n, chunk_tokens):
                if cancel is not None and cancel():
                    raise Cancelled("cancelled")
                e = min(s + chunk_tokens, n)
                logp = own(s, e)
                target = ids[s + 1:e + 1].to(logp.device)
                nll_w -= float(logp.gather(1, target[:, None]).cpu().sum(dtype=torch.float64))
                if ref is not None:
                    kl_sum += _kl_sum(ref(s, e).to(logp.device), logp)
                if sink is not None:
                    rows = _sink_rows(rows, logp, s, e, n)
            if sink is not None:
                sink(i, rows)
            nll_sum += nll_w
            tokens += n
            window_nll.append(nll_w / n)
            if progress is not None:
                progress((i + 1) / len(windows), f"window {i + 1}/{len(windows)}")
    nll = nll_sum / tokens
    return ModelEval(nll=nll, ppl=math.exp(nll), tokens=tokens,
                     kl=kl_sum / tokens if reference is not None else None,
                     windows=len(windows), seq_len=max(int(w.numel()) for w in windows),
                     window_nll=tuple(window_nll), time_s=time.perf_counter() - start)


def _kl_sum(ref_logp: torch.Tensor, logp: torch.Tensor) -> float:
    """``Σ_rows Σ_v p_ref (log p_ref − log p)``: each row summed in float32, the rows in
    float64 (a float64 copy of the whole chunk costs more than the KL itself). Overwrites
    ``ref_logp``."""
    diff = ref_logp - logp
    rows = diff.mul_(ref_logp.exp_()).sum(dim=-1)
    return float(rows.cpu().sum(dtype=torch.float64))  # on the CPU: MPS has no float64


def _sink_rows(rows, logp, s, e, n):
    if rows is None:
        rows = np.empty((n, logp.shape[1]), np.float16)
    rows[s:e] = logp.to("cpu", torch.float16).numpy()
    return rows


def reference_store(model, windows, directory, *, progress=None, cancel=None,
                    chunk_tokens: int = CHUNK_TOKENS) -> tuple[LogProbStore, ModelEval]:
    """Evaluate the reference model and store its log-probabilities; reuse a complete store.

    Each window's file is written atomically as it finishes and ``meta.json`` last, so an
    interrupted run leaves an incomplete store that the next call rewrites.

    Returns
    -------
    store : LogProbStore
    evaluation : ModelEval
        The reference's own NLL and perplexity (``kl`` None), from the store when reused.

    Examples
    --------
    >>> store, ev = reference_store(m, windows, tmp / "ref")  # doctest: +SKIP
    >>> evaluate_model(m, windows, reference=store).kl < 1e-5  # doctest: +SKIP
    True
    """
    store = LogProbStore(directory)
    windows = list(windows)
    if store.matches(windows):
        meta = store.meta()
        return store, ModelEval(**{**meta["evaluation"],
                                   "window_nll": tuple(meta["evaluation"]["window_nll"])})
    store.directory.mkdir(parents=True, exist_ok=True)
    store.meta_path.unlink(missing_ok=True)

    def sink(i, rows):
        atomic_save_npy(store.window_path(i), rows)

    ev = _evaluate(model, windows, None, sink, progress, cancel, chunk_tokens)
    meta = {"format": STORE_FORMAT, "dtype": "float16", "content": "log p(next token), rows = "
            "positions 0..L-2 of each window", "window_tokens": [int(w.numel()) for w in windows],
            "evaluation": ev.to_dict()}
    atomic_write_text(store.meta_path, json.dumps(meta, indent=1) + "\n")
    return store, ev
