"""Exports of a rate plan: llama-quantize --tensor-type arguments and GPTQModel's dynamic dict,
checked against the documented formats."""

import re

import pytest

from wfviz.allocation import LayerCost, allocate
from wfviz.errors import WfvizError
from wfviz.plan_export import (
    GGUF_TYPES,
    gguf_name,
    gguf_type,
    gptq_bits,
    to_gptqmodel_dynamic,
    to_llama_cpp,
)

KINDS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
         "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
         "down": "mlp.down_proj"}
GGUF = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate",
        "up": "ffn_up", "down": "ffn_down"}


def plan(blocks=12):
    layers = [LayerCost(f"model.layers.{b}.{KINDS[k]}", b, k, 1000, 1.0, float(b % 3) - 1,
                        0.0, 1.0 + (k == "down")) for b in range(blocks) for k in KINDS]
    return allocate(layers, 4.0, min_rate=1, max_rate=8)


def test_gguf_bits_per_weight_follow_the_block_layouts():
    # (bytes per block) * 8 / (weights per block)
    layouts = {"q2_K": (16 + 64 + 4, 256), "q3_K": (32 + 64 + 12 + 2, 256),
               "q4_K": (4 + 12 + 128, 256), "q5_K": (4 + 12 + 32 + 128, 256),
               "q6_K": (128 + 64 + 16 + 2, 256), "q8_0": (2 + 32, 32)}
    assert {t: 8 * b / n for t, (b, n) in layouts.items()} == dict(GGUF_TYPES)


def test_llama_cpp_arguments():
    p = plan()
    args = to_llama_cpp(p)
    assert args[::2] == ["--tensor-type"] * len(p.rates)
    names = [f"blk.{b}.{GGUF[k]}.weight" for b in range(12) for k in KINDS]
    for value, name, rate in zip(args[1::2], names, p.rates.values(), strict=True):
        pattern, qtype = value.rsplit("=", 1)
        assert qtype == gguf_type(rate) and qtype in dict(GGUF_TYPES)
        # llama-quantize searches each pattern in every tensor name: exactly one must match
        matched = [n for n in names + ["blk.1.attn_norm.weight", "output.weight"]
                   if re.search(pattern, n)]
        assert matched == [name]
    assert gguf_name("model.layers.10.self_attn.o_proj") == "blk.10.attn_output.weight"


def test_gguf_type_is_nearest():
    assert [gguf_type(r) for r in (1.0, 2.9, 3.1, 4.0, 5.2, 6.2, 7.6, 16)] == \
        ["q2_K", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_0", "q8_0"]


def test_gptqmodel_dynamic():
    p = plan()
    dyn = to_gptqmodel_dynamic(p)
    assert len(dyn) == len(p.rates)
    for (key, value), (name, rate) in zip(dyn.items(), p.rates.items(), strict=True):
        # GPTQModel: "+:" marks an override; the rest is a regex matched at the module name start
        assert key.startswith("+:") and set(value) == {"bits"}
        assert isinstance(value["bits"], int) and value["bits"] in (2, 3, 4, 8)
        assert value["bits"] == gptq_bits(rate)
        regex = re.compile(key.removeprefix("+:"))
        assert [n for n in p.rates if regex.match(n)] == [name]


def test_unknown_names_are_refused():
    with pytest.raises(WfvizError, match="not a Llama-style projection"):
        to_llama_cpp({"transformer.h.0.attn.c_attn": 3.0})
    with pytest.raises(WfvizError, match="non-empty"):
        to_gptqmodel_dynamic({})
