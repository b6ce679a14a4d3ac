"""Perplexity and KL of a causal LM against transformers' own loss and a direct computation."""

import math

import numpy as np
import pytest
import torch

from tests._tiny_llm import one_torch_thread, random_windows, tiny_model  # noqa: F401
from wfviz.errors import WfvizError
from wfviz.model_eval import LogProbStore, evaluate_model, reference_store
from wfviz.quantizers.base import Cancelled


def sharp_model(mlp_scale=1.0):
    """The tiny Llama with a larger LM head (peaked next-token distributions), its MLP outputs
    scaled by ``mlp_scale``."""
    m = tiny_model()
    with torch.no_grad():
        m.lm_head.weight.mul_(30.0)
        for layer in m.model.layers:
            layer.mlp.down_proj.weight.mul_(mlp_scale)
    return m


@pytest.fixture(scope="module")
def model():
    return sharp_model()


@pytest.fixture(scope="module")
def other():
    """A different next-token distribution."""
    return sharp_model(mlp_scale=3.0)


def labels_loss(model, windows):
    """transformers' mean loss per window, weighted by the predicted tokens of each."""
    with torch.no_grad():
        losses = [(model(input_ids=w[None], labels=w[None]).loss.item(), w.numel() - 1)
                  for w in windows]
    return sum(loss * n for loss, n in losses) / sum(n for _, n in losses)


def direct_kl(ref, model, windows):
    total, tokens = 0.0, 0
    with torch.no_grad():
        for w in windows:
            p = torch.log_softmax(ref(input_ids=w[None]).logits[0, :-1].double(), -1)
            q = torch.log_softmax(model(input_ids=w[None]).logits[0, :-1].double(), -1)
            total += float((p.exp() * (p - q)).sum())
            tokens += w.numel() - 1
    return total / tokens


@pytest.mark.parametrize("lengths", [(96, 96, 96), (96, 96, 41)])
def test_nll_equals_transformers_labels_loss(model, lengths):
    windows = random_windows(sum(lengths), 96)
    ev = evaluate_model(model, windows, chunk_tokens=40)
    assert ev.tokens == sum(n - 1 for n in lengths) and ev.windows == len(lengths)
    assert ev.nll == pytest.approx(labels_loss(model, windows), rel=1e-5)
    assert ev.ppl == pytest.approx(math.exp(ev.nll)) and ev.kl is None
    assert ev.seq_len == 96 and len(ev.window_nll) == len(lengths)


def test_kl_against_a_model_and_a_store(model, other, tmp_path):
    windows = random_windows(200, 64)
    want = direct_kl(model, other, windows)
    assert want > 1e-3
    by_model = evaluate_model(other, windows, reference=model)
    assert by_model.kl == pytest.approx(want, rel=1e-4)
    store, ref = reference_store(model, windows, tmp_path / "ref")
    assert ref.nll == pytest.approx(evaluate_model(model, windows).nll, rel=1e-12)
    files = sorted(p.name for p in store.directory.iterdir())
    assert files == ["meta.json"] + [f"window_{i:04d}.npy" for i in range(4)]
    stored = np.load(store.window_path(0), allow_pickle=False)
    assert stored.dtype == np.float16 and stored.shape == (63, model.config.vocab_size)
    by_store = evaluate_model(other, windows, reference=store)
    assert by_store.kl == pytest.approx(want, rel=2e-3)  # float16 log-probabilities
    assert by_store.nll == by_model.nll
    assert 0 <= evaluate_model(model, windows, reference=store).kl < 1e-5


def test_store_is_reused_and_checked(model, tmp_path, monkeypatch):
    windows = random_windows(130, 64)
    store, first = reference_store(model, windows, tmp_path / "ref")
    import wfviz.model_eval as me

    monkeypatch.setattr(me, "_evaluate", lambda *a, **k: pytest.fail("recomputed"))
    again, second = reference_store(model, windows, tmp_path / "ref")
    assert second == first
    monkeypatch.undo()
    with pytest.raises(WfvizError, match="other windows"):
        evaluate_model(model, random_windows(130, 32), reference=store)
    store.meta_path.unlink()  # an interrupted store is rebuilt, not read
    assert not LogProbStore(tmp_path / "ref").matches(windows)
    assert reference_store(model, windows, tmp_path / "ref")[1].nll == pytest.approx(first.nll)


def test_plain_head_and_full_forward_agree(model, monkeypatch):
    windows = random_windows(100, 50)
    plain = evaluate_model(model, windows)
    import wfviz.model_eval as me

    monkeypatch.setattr(me, "_plain_head", lambda m: None)
    assert evaluate_model(model, windows).nll == pytest.approx(plain.nll, rel=1e-6)


def test_cancel_stops_within_a_block(model):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        evaluate_model(model, random_windows(300, 100), cancel=cancel)
    assert len(calls) == 4  # polled per decoder block: stopped at the first True
    assert not any(b._forward_pre_hooks for b in model.model.layers)


def test_nothing_to_predict(model):
    with pytest.raises(WfvizError, match="2 tokens"):
        evaluate_model(model, [torch.tensor([3])])
