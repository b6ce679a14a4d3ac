"""Quantize every linear layer of a causal LM's decoder blocks against its own Σ_X.

What is quantized: each ``nn.Linear`` of the decoder blocks (q, k, v, o, gate, up, down in a
Llama-style model), with :func:`wfviz.quantize` on its real weight and the uncentred
``Σ_X = E[xxᵀ]`` of its real input. Embeddings, norms and the LM head stay as loaded, as in the
GPTQ and WaterSIC papers' model experiments; the rate of the model counts the quantized linears
only: ``Σ bits / Σ weights`` with side information, labelled with its metric.

Rotations. A layer is quantized in a rotated basis: ``W Qᵀ`` against ``Q Σ Qᵀ``, and
``Ŵ_rot Q`` is written back. Since ``Ŵ_rot Q x = Ŵ_rot (Q x)``, the model computes exactly what a
model deployed with online rotations computes (``Q`` applied to each linear's input at run time,
the rotated quantized weight stored); nothing is fused into neighbouring layers.

Calibration. ``"one-shot"``: every Σ_X from the unquantized model, collected once
(:func:`one_shot_sigmas`, cached on disk by the grid runner) and reused by every point.
``"sequential"``: GPTQ's true-sequential order: block by block, each block's inputs produced by
the already quantized blocks before it, and inside a block q/k/v first, then o, then gate/up,
then down, the block's inner activations recomputed after each group. The calibration tokens'
hidden states are kept between blocks (tokens × hidden × 4 bytes), and each block's attention
output is replayed from the cached inputs of its o-projection once q/k/v and o are quantized.
Either way each window's ``XᵀX`` is a float32 product, summed over windows in float64.
"""

from __future__ import annotations

import contextlib
import copy as _copy
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .collect import (
    LINEAR_INPUT,
    LayerStatistics,
    accumulator_device,
    cancel_hooks,
    collect_statistics,
    decoder_blocks,
)
from .device import float64_device, forward_oom_as_error
from .errors import Cancelled, WfvizError
from .model_cache import cache_key, load_arrays, model_fingerprint, save_arrays

CALIBRATIONS = ("one-shot", "sequential")
_GROUP_ORDER = ("qkv", "o", "gate_up", "down")
SIGMA_CACHE_FORMAT = 1
SIGMA_PRODUCTS = "float32"
"""Precision of each window's ``XᵀX`` (summed in float64): on the real SmolLM2 layers the
float32 products change Σ_X by < 1e-6 (relative Frobenius) and the predicted gap by < 1e-5 bit,
far below the sampling noise of the calibration tokens, and take about half the time."""


@dataclass(frozen=True)
class LinearLayer:
    """One quantizable linear layer: its full module name, block, kind and input.

    ``name`` is the name in ``model.named_modules()``, e.g.
    ``model.layers.3.self_attn.q_proj``; ``kind`` is the last part (``q_proj``); ``input`` the
    Σ_X it reads (``qkv``, ``o``, ``gate_up``, ``down``).
    """

    name: str
    block: int
    kind: str
    input: str
    module: torch.nn.Linear = field(repr=False, compare=False)

    @property
    def weights(self) -> int:
        return int(self.module.weight.numel())


def model_linears(model) -> list[LinearLayer]:
    """Every ``nn.Linear`` of the decoder blocks, in processing order (block by block, and in
    a block q/k/v, o, gate/up, down).

    Raises
    ------
    WfvizError
        No decoder blocks, no linear layers in them, or a linear of a kind wfviz does not know
        (its input Σ_X would not be collected).

    Examples
    --------
    >>> from transformers import LlamaConfig, LlamaForCausalLM  # doctest: +SKIP
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=2, vocab_size=50))  # doctest: +SKIP
    >>> [l.name for l in model_linears(m)][:2]  # doctest: +SKIP
    ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj']
    """
    names = {id(m): n for n, m in model.named_modules()}
    layers = []
    for b, block in enumerate(decoder_blocks(model)):
        found = []
        for sub, module in block.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            kind = sub.rsplit(".", 1)[-1]
            if kind not in LINEAR_INPUT:
                raise WfvizError(f"Decoder block {b} has a linear layer '{sub}' that wfviz does "
                                 "not know; only Llama-style projections (q/k/v/o, gate/up/"
                                 "down) are supported.")
            found.append(LinearLayer(f"{names[id(block)]}.{sub}", b, kind, LINEAR_INPUT[kind],
                                     module))
        layers += sorted(found, key=lambda la: _GROUP_ORDER.index(la.input))
    if not layers:
        raise WfvizError("The decoder blocks have no linear layers to quantize; only Llama-style "
                         "causal LMs are supported.")
    return layers


def snapshot_linears(model) -> dict[str, torch.Tensor]:
    """Copies of every decoder linear's weight, to undo a quantization with
    :func:`restore_linears` (cheaper than copying the whole model: no embeddings).

    Examples
    --------
    >>> snap = snapshot_linears(m)  # doctest: +SKIP
    >>> restore_linears(m, snap)  # doctest: +SKIP
    """
    return {la.name: la.module.weight.detach().clone() for la in model_linears(model)}


def restore_linears(model, snapshot: Mapping[str, torch.Tensor]) -> None:
    """Put the weights of :func:`snapshot_linears` back in place."""
    with torch.no_grad():
        for la in model_linears(model):
            la.module.weight.copy_(snapshot[la.name])


# ---------------------------------------------------------------------------------------------
# Rate plans


class FixedRates:
    """A rate controller that hands out the rates of a mapping (layer name → rate).

    Controllers are called in processing order: ``next_rate(name, weights)`` before a layer is
    quantized, ``record(name, bits)`` after, with the bits it really took. A fixed mapping ignores
    what was recorded; an adaptive controller (remaining bits ÷ remaining weights) uses it.

    Examples
    --------
    >>> c = FixedRates({"a": 3.0})
    >>> c.next_rate("a", 100), c.record("a", 290.0)
    (3.0, None)
    """

    def __init__(self, rates: Mapping[str, float]):
        self.rates = dict(rates)

    def next_rate(self, name: str, weights: int) -> float:
        return self.rates[name]

    def record(self, name: str, bits: float) -> None:
        return None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_rate(method: str, rate) -> float:
    """A finite positive rate; a whole number of bits (1–16) for ``rtn`` and ``gptq``.

    Examples
    --------
    >>> check_rate("watersic", 2.5)
    2.5
    >>> check_rate("gptq", 2.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    wfviz.errors.WfvizError: Method gptq uses whole bits (a grid of 2^b levels), ...
    """
    from .quantizers import get_method

    spec = get_method(method)
    if not _number(rate) or rate <= 0:
        raise WfvizError(f"Rates must be finite numbers > 0 bits per weight, got {rate!r}.")
    if spec.integer_rates and (rate != int(rate) or not 1 <= rate <= 16):
        raise WfvizError(f"Method {method} uses whole bits (a grid of 2^b levels), so its rates "
                         f"must be whole numbers from 1 to 16, got {rate!r}; use gptq-ec or "
                         "watersic for fractional rates.")
    return float(rate)


def rate_controller(layers, method: str, *, rate=None, plan=None):
    """One controller for every case: a uniform ``rate``, a mapping ``plan``, or a controller.

    Raises
    ------
    WfvizError
        Neither or both of rate and plan; a mapping that names an unknown layer (the first is
        named), misses a layer, or holds a rate the method cannot use; an object that is no
        controller.

    Examples
    --------
    >>> rate_controller([], "gptq", plan={"nope": 4})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    wfviz.errors.WfvizError: The plan names layer 'nope', which this model does not have; ...
    """
    if (rate is None) == (plan is None):
        raise WfvizError("Give either a rate or a plan (layer name → rate), not both or neither.")
    if plan is None:
        r = check_rate(method, rate)
        return FixedRates({la.name: r for la in layers})
    if isinstance(plan, Mapping):
        known = {la.name for la in layers}
        unknown = [name for name in plan if name not in known]
        if unknown:
            example = layers[0].name if layers else "model.layers.0.self_attn.q_proj"
            raise WfvizError(f"The plan names layer '{unknown[0]}', which this model does not "
                             f"have; plans use full module names such as '{example}'.")
        missing = [la.name for la in layers if la.name not in plan]
        if missing:
            raise WfvizError(f"The plan has no rate for layer '{missing[0]}'; give every "
                             f"quantized linear layer a rate ({len(layers)} in all).")
        return FixedRates({name: check_rate(method, r) for name, r in plan.items()})
    if not (callable(getattr(plan, "next_rate", None)) and callable(getattr(plan, "record", None))):
        raise WfvizError("plan must be a mapping (layer name → rate) or a controller with "
                         "next_rate(name, weights) and record(name, bits).")
    return plan


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class LayerQuant:
    """One quantized linear layer.

    Attributes
    ----------
    name, block, kind : str, int, str
        Full module name, decoder block, projection kind.
    a, n : int
        Output and input features (``W`` is ``a × n``).
    target_rate : float
        The rate asked for (grid bits for rtn/gptq, measured bits for gptq-ec/watersic).
    rate : float
        Measured bits per weight, side information included, under ``rate_metric``.
    rate_metric : str
    bits : float
        ``rate · a · n``.
    relative_distortion : float
        ``tr(EΣEᵀ)/tr(WΣWᵀ)`` with ``E = W − Ŵ`` and the Σ_X this layer was quantized against.
    predicted_gap_bits : float
        GPTQ's high-rate gap over WaterSIC, ``½ log2(AM(d)/GM(d))`` with ``d`` the Cholesky
        diagonal of the rotated Σ_X in GPTQ's order.
    log2_am_d, log2_gm_d : float
        ``log2`` of the arithmetic and geometric means of that ``d``.
    weight_var : float
        Mean square weight ``‖W‖²/(a·n)`` (the same in every rotated basis).
    time_s : float
        Wall time of :func:`wfviz.quantize` for this layer.
    """

    name: str
    block: int
    kind: str
    a: int
    n: int
    target_rate: float
    rate: float
    rate_metric: str
    bits: float
    relative_distortion: float
    predicted_gap_bits: float
    log2_am_d: float
    log2_gm_d: float
    weight_var: float
    time_s: float

    def to_dict(self) -> dict:
        from .stats import json_safe

        return json_safe(asdict(self))


@dataclass(frozen=True)
class ModelQuantResult:
    """A quantized model and its per-layer table.

    Attributes
    ----------
    model : torch.nn.Module
        The quantized model (the one passed in, or its copy).
    layers : tuple of LayerQuant
        In processing order.
    method, rotation, calibration, rate_metric : str
    seed : int
    calibration_time_s : float
        Time spent collecting Σ_X inside this call (sequential calibration, or one-shot
        without given statistics).
    time_s : float
        Wall time of the whole call.
    """

    model: torch.nn.Module = field(repr=False, compare=False)
    layers: tuple
    method: str
    rotation: str
    calibration: str
    rate_metric: str
    seed: int
    calibration_time_s: float
    time_s: float

    @property
    def weights(self) -> int:
        return sum(la.a * la.n for la in self.layers)

    @property
    def bits(self) -> float:
        return float(sum(la.bits for la in self.layers))

    @property
    def rate(self) -> float:
        """Bits per weight of the quantized linears, ``Σ bits / Σ weights``."""
        return self.bits / self.weights

    def to_rows(self) -> list[dict]:
        """The per-layer table as tidy dict rows (JSON-ready)."""
        return [la.to_dict() for la in self.layers]

    def summary(self) -> dict:
        """The model-level numbers, with the rate's metric and axis label.

        Examples
        --------
        >>> res.summary()["rate_label"]  # doctest: +SKIP
        'rate (bits/weight, per-column entropy)'
        """
        from .rates import rate_axis_label

        return {"method": self.method, "rotation": self.rotation,
                "calibration": self.calibration, "rate": self.rate,
                "rate_metric": self.rate_metric, "rate_label": rate_axis_label(self.rate_metric),
                "bits": self.bits, "weights": self.weights, "layers": len(self.layers),
                "seed": self.seed, "calibration_time_s": self.calibration_time_s,
                "time_s": self.time_s}


# ---------------------------------------------------------------------------------------------
# One-shot statistics and their cache


class SigmaSet(Mapping):
    """Σ_X per ``(block, input)``: in memory, or read one at a time from a cache file.

    Examples
    --------
    >>> s = SigmaSet({(0, "o"): np.eye(2)}, tokens=5)
    >>> s[(0, "o")].shape, len(s), s.tokens
    ((2, 2), 1, 5)
    >>> s.theory((0, "o"), "identity", 0)["predicted_gap_bits"]
    0.0
    """

    def __init__(self, sigmas, tokens: int, arrays=None):
        self._sigmas = sigmas
        self._arrays = arrays
        self.tokens = tokens
        self._theory: dict = {}

    def theory(self, key, rotation: str, seed: int) -> dict:
        """The layer theory of one Σ_X in a rotated basis (see :class:`LayerQuant`), computed
        once and reused by every point of a grid that shares this set."""
        memo = (key, rotation, seed)
        if memo not in self._theory:
            self._theory[memo] = _theory(self[key], rotation, seed)
        return self._theory[memo]

    def __getitem__(self, key):
        if self._arrays is not None:
            return self._arrays[_array_name(key)]
        return self._sigmas[key]

    def __iter__(self):
        return iter(self._sigmas)

    def __len__(self) -> int:
        return len(self._sigmas)


def _array_name(key) -> str:
    return f"b{key[0]}_{key[1]}"


def sigma_cache_file(root, model_info: dict, spans, dtype: str = "float32"):
    """Path of the one-shot Σ_X cache for a model, calibration span and window length.

    The key hashes the model's file hashes (or id and revision), the calibration text's sha256,
    the span's token offsets, the window length and the model's dtype.

    Examples
    --------
    >>> from wfviz.model_text import SpanPlan, TokenSpan
    >>> t = {"sha256": "ab"}
    >>> sp = SpanPlan(TokenSpan(t, 0, 8), TokenSpan(t, 8, 8), 4)
    >>> sigma_cache_file("/c", {"files": {"m": "x"}}, sp).parent.name
    'sigma'
    """
    from .model_cache import cache_root

    c = spans.calibration
    key = cache_key({"kind": "one-shot sigma_x", "format": SIGMA_CACHE_FORMAT,
                     "model": model_fingerprint(model_info), "text": c.text.get("sha256"),
                     "start": c.start, "tokens": c.tokens, "seq_len": spans.seq_len,
                     "dtype": dtype, "products": SIGMA_PRODUCTS})
    return cache_root(root) / "sigma" / f"{key}.npz"


def _reporting(windows, progress, cancel, what: str):
    """Yield the windows, polling ``cancel`` before and reporting ``progress`` after each."""
    windows = list(windows)
    total = sum(int(w.numel()) for w in windows) or 1
    done = 0
    for i, ids in enumerate(windows):
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        yield ids
        done += int(ids.numel())
        if progress is not None:
            progress(done / total, f"{what}: window {i + 1}/{len(windows)}")


def one_shot_sigmas(model, windows, *, cache_file=None, progress=None, cancel=None) -> SigmaSet:
    """Σ_X of every decoder-linear input of the (unquantized) model, collected once.

    With ``cache_file``, a complete cache is read back instead (arrays loaded lazily, one at a
    time), and a new collection is written there atomically (uncompressed ``.npz``, float64,
    no pickle) before it is returned.

    Examples
    --------
    >>> sig = one_shot_sigmas(m, windows, cache_file=tmp / "s.npz")  # doctest: +SKIP
    >>> sig[(0, "qkv")].shape  # doctest: +SKIP
    (576, 576)
    """
    if cache_file is not None:
        cached = load_arrays(cache_file)
        if cached is not None:
            arrays, meta = cached
            keys = [tuple(k) for k in meta["keys"]]
            return SigmaSet(dict.fromkeys(keys), tokens=int(meta["tokens"]), arrays=arrays)
    dev = next(model.parameters()).device
    acc = accumulator_device(model, dev, _GROUP_ORDER, len(decoder_blocks(model)))
    with cancel_hooks(model, cancel), torch.inference_mode(), forward_oom_as_error():
        stats: LayerStatistics = collect_statistics(
            model, _reporting(windows, progress, cancel, "Σ_X"), accumulate_device=acc,
            progress=False, products=SIGMA_PRODUCTS)
    if cache_file is None:
        return SigmaSet(stats.sigmas, tokens=stats.tokens)
    meta = {"tokens": stats.tokens, "keys": [list(k) for k in stats.sigmas],
            "products": SIGMA_PRODUCTS,
            "definition": "Σ_X = XᵀX / tokens, uncentred, unquantized model; float32 products "
                          "per window summed in float64"}
    save_arrays(cache_file, {_array_name(k): v for k, v in stats.sigmas.items()}, meta)
    del stats
    return one_shot_sigmas(model, windows, cache_file=cache_file)


# ---------------------------------------------------------------------------------------------
# Sequential calibration


class _Stop(Exception):
    """Ends a forward pass early, once the wanted activation has been seen."""


def _block_inputs(model, windows, cancel):
    """Hidden states entering the first block for every window, and the block's keyword
    arguments (position embeddings, mask...) per window length."""
    first = decoder_blocks(model)[0]
    base = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    hidden, kwargs = [], {}

    def hook(_module, args, kw):
        h = args[0] if args else kw.pop("hidden_states")
        hidden.append(h.detach())
        kwargs.setdefault(h.shape[1], kw)
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in windows:
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            try:
                base(input_ids=ids.reshape(1, -1).to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return hidden, kwargs


def _block_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class _AttentionReplay:
    """Replays a block's attention output from the cached inputs of its output projection.

    Once q/k/v and o are quantized, the attention output of a window is ``o(A)`` with ``A``
    the o-projection's input seen in the o-group's pass; the later passes of the block (gate/up,
    down, the block's output) then skip the attention itself: about half of a block's work at
    2048 tokens. The replay is checked against a real pass once (``check``) and only used when
    the two agree, so a block of another shape falls back to recomputing.
    """

    def __init__(self, block, o_layer: LinearLayer | None):
        self.inputs: list[torch.Tensor] = []
        self.window = 0
        self.o_proj = o_layer.module if o_layer is not None else None
        # the module whose last step is the o-projection (Llama's self_attn), not the block
        self.attention = next((m for m in block.modules() if m is not block and any(
            c is self.o_proj for c in m.children())), None)
        self.usable = self.attention is not None

    def _forward(self, *args, **kwargs):
        return self.o_proj(self.inputs[self.window]), None

    @contextlib.contextmanager
    def active(self):
        if not self.usable or not self.inputs:
            yield
            return
        self.attention.forward = self._forward  # an instance attribute shadows the method
        try:
            yield
        finally:
            del self.attention.forward

    def check(self, block, hidden, kwargs) -> None:
        """Compare one window's block output with and without the replay."""
        if not self.usable or not self.inputs:
            return
        h = hidden[0]
        want = _block_output(block(h, **kwargs[h.shape[1]]))
        self.window = 0
        with self.active():
            got = _block_output(block(h, **kwargs[h.shape[1]]))
        scale = float(want.abs().max()) or 1.0
        self.usable = bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * scale))


def _block_pass(block, hidden, kwargs, cancel, replay, *, capture=None, keep=False):
    """Run ``block`` over every window: stopped at ``capture``'s input (a linear layer and a
    function that receives that input), or to the end, keeping the outputs when ``keep``."""

    def hook(_module, args):
        capture[1](args[0].detach())
        raise _Stop

    handle = capture[0].register_forward_pre_hook(hook) if capture is not None else None
    try:
        with replay.active():
            for i, h in enumerate(hidden):
                if cancel is not None and cancel():
                    raise Cancelled("cancelled")
                replay.window = i
                try:
                    out = block(h, **kwargs[h.shape[1]])
                except _Stop:
                    continue
                if keep:
                    hidden[i] = _block_output(out)
    finally:
        if handle is not None:
            handle.remove()


class _SigmaSum:
    """Σ_X = XᵀX / N over the windows: float32 products per window, float64 sum."""

    def __init__(self, keep_inputs: list | None = None):
        self.acc, self.tokens, self.keep = None, 0, keep_inputs

    def __call__(self, x: torch.Tensor) -> None:
        if self.keep is not None:
            self.keep.append(x)
        x = x.reshape(-1, x.shape[-1]).float()
        product = (x.T @ x).to(float64_device(x.device), torch.float64)
        self.acc = product if self.acc is None else self.acc.add_(product)
        self.tokens += x.shape[0]

    def sigma(self) -> torch.Tensor:
        return self.acc / self.tokens


def _sequential(model, layers, windows, run_group, cancel) -> float:
    """Run GPTQ's true-sequential order; returns the time spent collecting Σ_X."""
    spent = 0.0
    replay_ok = None  # whether the attention replay matched a real pass (checked once)
    with torch.no_grad():  # not inference mode: its tensors must not reach the quantizers
        t0 = time.perf_counter()
        hidden, kwargs = _block_inputs(model, windows, cancel)
        spent += time.perf_counter() - t0
        for b, block in enumerate(decoder_blocks(model)):
            mine = [la for la in layers if la.block == b]
            replay = _AttentionReplay(block, next((la for la in mine if la.input == "o"), None))
            replay.usable = replay.usable and replay_ok is not False
            for key in _GROUP_ORDER:
                group = [la for la in mine if la.input == key]
                if not group:
                    continue
                t0 = time.perf_counter()
                acc = _SigmaSum(replay.inputs if key == "o" and replay.usable else None)
                _block_pass(block, hidden, kwargs, cancel, replay, capture=(group[0].module, acc))
                spent += time.perf_counter() - t0
                run_group(group, acc.sigma())
                if key == "o" and replay_ok is None and replay.usable:
                    replay.check(block, hidden, kwargs)
                    replay_ok = replay.usable
            t0 = time.perf_counter()
            _block_pass(block, hidden, kwargs, cancel, replay, keep=True)
            spent += time.perf_counter() - t0
    return spent


# ---------------------------------------------------------------------------------------------
# The per-layer step


def _theory(sigma, rotation: str, seed: int) -> dict:
    """GPTQ-order Cholesky diagonal of the rotated Σ_X: the predicted gap and its means."""
    from .rotations import get_rotation
    from .theory import cholesky_diag, gptq_gap_bits

    S = sigma.detach().cpu().numpy() if isinstance(sigma, torch.Tensor) else np.asarray(sigma)
    Sr = get_rotation(rotation, S.shape[0], seed=seed, sigma=S).apply_sigma(S)
    for damping in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        try:
            d = cholesky_diag(Sr, damping=damping, order="gptq")
            break
        except WfvizError:
            continue
    else:
        return {"predicted_gap_bits": math.nan, "log2_am_d": math.nan, "log2_gm_d": math.nan}
    return {"predicted_gap_bits": gptq_gap_bits(d), "log2_am_d": float(np.log2(d.mean())),
            "log2_gm_d": float(np.mean(np.log2(d)))}


def quantize_model(model, calib_windows, *, method: str, rate=None, plan=None,
                   rotation: str = "identity", calibration: str = "one-shot",
                   rate_metric: str | None = None, seed: int = 0, device: str = "auto",
                   progress=None, cancel=None, copy: bool = False, sigmas=None,
                   **options) -> ModelQuantResult:
    """Quantize every linear layer of the decoder blocks with ``method`` against its Σ_X.

    Parameters
    ----------
    model : transformers causal LM
        Llama-style; on its device, in eval mode. Changed in place unless ``copy``.
    calib_windows : sequence of 1-D LongTensor
        Calibration token windows (unused for one-shot when ``sigmas`` is given).
    method : str
        ``rtn``, ``gptq`` (whole bits), ``gptq-ec`` or ``watersic`` (measured-rate targets).
    rate : float, optional
        One rate for every layer.
    plan : mapping or controller, optional
        Layer name (as in ``model.named_modules()``) → rate, or an object with
        ``next_rate(name, weights) -> float`` and ``record(name, bits)``, called in processing
        order. Exactly one of ``rate`` and ``plan``.
    rotation : str
        Rotation of every layer's basis (see the module docstring: online rotations).
    calibration : {"one-shot", "sequential"}
    rate_metric : str, optional
        How rates are counted; the method's default when None.
    seed : int
        Seed of random rotations (the same for every layer).
    device : str
        Where the quantizers compute (``auto``: CUDA if present); forward passes run where the
        model is. A GPU out of memory in a quantizer falls back to the CPU.
    progress : callable, optional
        ``progress(fraction, message)``.
    cancel : callable, optional
        Returning True raises :class:`~wfviz.quantizers.base.Cancelled` (polled per decoder
        block of every forward pass and inside the quantizers' loops).
    copy : bool
        Quantize a deep copy and leave ``model`` untouched.
    sigmas : mapping, optional
        One-shot Σ_X per ``(block, input)`` (:func:`one_shot_sigmas`); collected here when None.
    **options
        Method options passed to :func:`wfviz.quantize` (e.g. ``damping``).

    Returns
    -------
    ModelQuantResult

    Raises
    ------
    WfvizError
        Bad method, rotation, rate, plan or calibration; a model that is not Llama-style; a
        forward pass out of memory.

    Examples
    --------
    >>> from transformers import LlamaConfig, LlamaForCausalLM  # doctest: +SKIP
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=2, vocab_size=50)).eval()  # doctest: +SKIP
    >>> res = quantize_model(m, [torch.arange(40)], method="gptq", rate=4)  # doctest: +SKIP
    >>> len(res.layers), res.rate_metric  # doctest: +SKIP
    (14, 'log_cardinality')
    """
    from .quantizers import get_method
    from .rotations import ROTATIONS

    spec = get_method(method)
    if rotation not in ROTATIONS:
        raise WfvizError(f"Unknown rotation {rotation!r}; use one of {', '.join(ROTATIONS)}.")
    if calibration not in CALIBRATIONS:
        raise WfvizError(f"Unknown calibration {calibration!r}; use one-shot or sequential.")
    metric = rate_metric or spec.default_metric
    start = time.perf_counter()
    if copy:
        model = _copy.deepcopy(model)
    layers = model_linears(model)
    controller = rate_controller(layers, method, rate=rate, plan=plan)
    run = _LayerRunner(method, rotation, metric, seed, device, controller, cancel, options,
                       progress, sum(la.weights for la in layers), len(decoder_blocks(model)))
    with forward_oom_as_error():
        calib_time = _calibrate_and_quantize(model, layers, calib_windows, calibration, sigmas,
                                             run, cancel)
    return ModelQuantResult(model=model, layers=tuple(run.rows), method=method,
                            rotation=rotation, calibration=calibration, rate_metric=metric,
                            seed=seed, calibration_time_s=calib_time,
                            time_s=time.perf_counter() - start)


def _calibrate_and_quantize(model, layers, windows, calibration, sigmas, run, cancel) -> float:
    if calibration == "sequential":
        return _sequential(model, layers, windows, run.group, cancel)
    t0 = time.perf_counter()
    if sigmas is None:
        sigmas = one_shot_sigmas(model, windows, cancel=cancel)
    spent = time.perf_counter() - t0
    for key in dict.fromkeys((la.block, la.input) for la in layers):
        theory = sigmas.theory(key, run.rotation, run.seed) if isinstance(sigmas, SigmaSet) \
            else None
        run.group([la for la in layers if (la.block, la.input) == key], sigmas[key], theory)
    return spent


class _LayerRunner:
    """Quantizes groups of layers that share a Σ_X and keeps the table's rows."""

    def __init__(self, method, rotation, metric, seed, device, controller, cancel, options,
                 progress, total_weights, n_blocks):
        self.method, self.rotation, self.metric, self.seed = method, rotation, metric, seed
        self.device, self.controller, self.cancel = device, controller, cancel
        self.options, self.progress = options, progress
        self.total, self.done, self.n_blocks = total_weights, 0, n_blocks
        self.rows: list[LayerQuant] = []

    def group(self, group, sigma, theory: dict | None = None) -> None:
        theory = theory or _theory(sigma, self.rotation, self.seed)
        for la in group:
            self.layer(la, sigma, theory)

    def layer(self, la: LinearLayer, sigma, theory: dict) -> None:
        from .quantize_layer import quantize

        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")
        target = self.controller.next_rate(la.name, la.weights)
        check_rate(self.method, target)
        W = la.module.weight.detach()
        weight_var = float(W.double().pow(2).mean())  # before W's storage is overwritten
        res = quantize(W, sigma, method=self.method, rate=target, rotation=self.rotation,
                       seed=self.seed, device=self.device, rate_metric=self.metric,
                       cancel=self.cancel, **self.options)
        with torch.no_grad():
            la.module.weight.copy_(res.W_hat)
        a, n = W.shape
        bits = float(res.rate) * a * n
        self.controller.record(la.name, bits)
        self.rows.append(LayerQuant(
            name=la.name, block=la.block, kind=la.kind, a=int(a), n=int(n),
            target_rate=float(target), rate=float(res.rate), rate_metric=res.rate_metric,
            bits=bits, relative_distortion=float(res.relative_distortion),
            weight_var=weight_var, time_s=float(res.time_s), **theory))
        self.done += la.weights
        if self.progress is not None:
            self.progress(self.done / self.total,
                          f"block {la.block + 1}/{self.n_blocks} {la.kind}")
