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


def save_tiny_model(directory):
    """The tiny model and its tokenizer saved as a Hugging Face model folder."""
    tiny_model().save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def write_tiny_grid(root, model_dir, text):
    """A real grid on the tiny model, written by run_model_grid into ``root / "out"``:
    gptq at 3 and 4 bits and watersic at 3, one-shot, 256 + 256 tokens in windows of 128."""
    from wfviz.model_grid import ModelGridConfig, run_model_grid

    common = dict(model=str(model_dir), text=str(text), calib_tokens=256, eval_tokens=256,
                  seq_len=128, device="cpu", cache_dir=str(root / "cache"), out=str(root / "out"),
                  resume=True)
    run_model_grid(ModelGridConfig(methods=("gptq",), rates=(3.0, 4.0), **common))
    run_model_grid(ModelGridConfig(methods=("watersic",), rates=(3.0,), **common))
    return root / "out"



def tiny_model_page(root):
    """What the Model page tests show: the tiny model saved, a 6000-word text and a grid on
    them (:func:`write_tiny_grid`), as ``dict(model, text, grid)``."""
    model_dir = save_tiny_model(root / "model")
    text = write_text(root / "wiki.txt", 6000)
    return dict(model=model_dir, text=text, grid=write_tiny_grid(root, model_dir, text))
