"""A rate plan in the formats of two deployment tools: llama.cpp and GPTQModel.

**llama.cpp** (``llama-quantize --tensor-type PATTERN=TYPE``, repeatable; the pattern is a
regular expression searched in each GGUF tensor name). Hugging Face names map to GGUF names as

=========================================  ==========================
``model.layers.{i}.self_attn.q_proj``      ``blk.{i}.attn_q.weight``
``...self_attn.k_proj`` / ``v_proj``       ``blk.{i}.attn_k`` / ``attn_v``
``...self_attn.o_proj``                    ``blk.{i}.attn_output``
``...mlp.gate_proj`` / ``up_proj``         ``blk.{i}.ffn_gate`` / ``ffn_up``
``...mlp.down_proj``                       ``blk.{i}.ffn_down``
=========================================  ==========================

and each layer's rate to the GGUF type whose storage cost is nearest (ties to the larger type).
The costs follow from the block layouts (bits per weight, scales included):

=======  ======  =====================================================================
type     bpw     block
=======  ======  =====================================================================
q2_K     2.625   256 weights: 2-bit codes (64 B), 16 4-bit scale/min pairs (16 B), 2 fp16
q3_K     3.4375  256 weights: 3-bit codes (96 B), 16 6-bit scales (12 B), 1 fp16
q4_K     4.5     256 weights: 4-bit codes (128 B), 8 6-bit scale/min pairs (12 B), 2 fp16
q5_K     5.5     256 weights: 5-bit codes (160 B), 8 6-bit scale/min pairs (12 B), 2 fp16
q6_K     6.5625  256 weights: 6-bit codes (192 B), 16 8-bit scales (16 B), 1 fp16
q8_0     8.5     32 weights: 8-bit codes (32 B), 1 fp16
=======  ======  =====================================================================

The k-quants need rows whose length is a multiple of 256; llama.cpp substitutes another type
for tensors that are not (SmolLM2's 576-wide rows, for example), so check its log.

**GPTQModel** (``QuantizeConfig(dynamic=...)``): a dict from a regular expression over module
names, prefixed ``+:`` (override), to the fields that override the base config; here
``{"bits": b}`` with ``b`` the nearest whole number of bits GPTQ kernels support, 2, 3, 4 or 8.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import WfvizError

GGUF_TYPES = (("q2_K", 2.625), ("q3_K", 3.4375), ("q4_K", 4.5), ("q5_K", 5.5),
              ("q6_K", 6.5625), ("q8_0", 8.5))
"""GGUF quant types and their storage cost in bits per weight (see the module docstring)."""

GGUF_TENSORS = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
                "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}
GPTQ_BITS = (2, 3, 4, 8)
_HF_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj$")


def _rates(plan) -> dict:
    rates = getattr(plan, "rates", plan)
    if not isinstance(rates, Mapping) or not rates:
        raise WfvizError("Give a RatePlan or a non-empty mapping of layer name to rate.")
    return dict(rates)


def _parse(name: str) -> tuple[int, str]:
    found = _HF_NAME.search(name)
    if found is None:
        raise WfvizError(f"Layer '{name}' is not a Llama-style projection "
                         "(model.layers.<i>.self_attn.q_proj ... mlp.down_proj); only those can "
                         "be exported.")
    return int(found.group(1)), found.group(2)


def gguf_type(rate: float) -> str:
    """The GGUF type whose bits per weight are nearest ``rate`` (ties to the larger).

    Examples
    --------
    >>> gguf_type(3.0), gguf_type(3.3), gguf_type(12.0)
    ('q2_K', 'q3_K', 'q8_0')
    """
    return min(GGUF_TYPES, key=lambda t: (abs(t[1] - rate), -t[1]))[0]


def gguf_name(name: str) -> str:
    """The GGUF tensor name of a Hugging Face linear.

    Examples
    --------
    >>> gguf_name("model.layers.3.mlp.down_proj")
    'blk.3.ffn_down.weight'
    """
    block, kind = _parse(name)
    return f"blk.{block}.{GGUF_TENSORS[kind]}.weight"


def to_llama_cpp(plan) -> list[str]:
    """``llama-quantize`` arguments, ``["--tensor-type", "^blk\\.3\\.attn_q\\.weight$=q3_K",
    ...]``: one anchored pattern per tensor, so no pattern can match another tensor.

    Examples
    --------
    >>> to_llama_cpp({"model.layers.0.self_attn.v_proj": 4.2})
    ['--tensor-type', '^blk\\\\.0\\\\.attn_v\\\\.weight$=q4_K']
    """
    args = []
    for name, rate in _rates(plan).items():
        args += ["--tensor-type", f"^{re.escape(gguf_name(name))}$={gguf_type(rate)}"]
    return args


def gptq_bits(rate: float) -> int:
    """The nearest whole number of bits GPTQ kernels support (ties to the larger).

    Examples
    --------
    >>> gptq_bits(2.4), gptq_bits(2.5), gptq_bits(6.5)
    (2, 3, 8)
    """
    return min(GPTQ_BITS, key=lambda b: (abs(b - rate), -b))


def to_gptqmodel_dynamic(plan) -> dict:
    """GPTQModel's ``dynamic`` dict: ``{"+:^model\\.layers\\.3\\.mlp\\.down_proj$": {"bits": 4}}``.

    Examples
    --------
    >>> to_gptqmodel_dynamic({"model.layers.0.mlp.up_proj": 3.2})
    {'+:^model\\\\.layers\\\\.0\\\\.mlp\\\\.up_proj$': {'bits': 3}}
    """
    out = {}
    for name, rate in _rates(plan).items():
        _parse(name)
        out[f"+:^{re.escape(name)}$"] = {"bits": gptq_bits(rate)}
    return out
