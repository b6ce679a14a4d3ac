"""A tiny random Llama and a word-level tokenizer, built offline, for the whole-model tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = [f"w{i}" for i in range(60)]
VOCAB = len(WORDS) + 2


def tiny_config(**overrides):
    cfg = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    return transformers.LlamaConfig(**{**cfg, **overrides})


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(tiny_config(**overrides)).eval()


def tiny_tokenizer():
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                pad_token="[PAD]")


def write_text(path, words: int, seed: int = 0):
    """A text of ``words`` random words (one token each with the tiny tokenizer)."""
    rng = np.random.default_rng(seed)
    path.write_text(" ".join(rng.choice(WORDS, size=words)), encoding="utf-8")
    return path


def random_windows(tokens: int, seq_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return list(torch.split(torch.randint(2, VOCAB, (tokens,), generator=g), seq_len))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread for these tiny matrices: on a shared 2-core machine two threads spend
    most of their time waiting for each other (3-4x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
