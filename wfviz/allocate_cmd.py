"""``wfviz allocate``: a per-layer rate plan for a model, written as JSON or exported.

The calibration span, its windows and the one-shot Σ_X cache are those of ``wfviz
quantize-model`` with the same ``--text``/``--calib-tokens``/``--seq-len``, so a plan and the
grid that runs it share one Σ_X.
"""

from __future__ import annotations

from .errors import WfvizError

SENSITIVITIES = ("none", "noise", "fisher")
FORMATS = ("json", "llama-cpp", "gptqmodel")


def add_arguments(p) -> None:
    """The options of ``wfviz allocate`` on an argparse parser."""
    p.add_argument("--model", required=True, help="Hugging Face id or local model directory")
    p.add_argument("--gguf-file", default=None, help="GGUF file inside --model (dequantized)")
    p.add_argument("--text", help="calibration text (its first --calib-tokens tokens)")
    p.add_argument("--calib-tokens", type=int, required=True, help="calibration tokens")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per window (default 2048)")
    p.add_argument("--budget", type=float, required=True, help="mean bits per weight (0-16)")
    p.add_argument("--sensitivity", default="none", help="none (s=1), noise or fisher")
    p.add_argument("--cost", default="high-rate", help="high-rate or measured")
    p.add_argument("--method", default="watersic", help="watersic or gptq-ec")
    p.add_argument("--rotation", default="identity", help="basis the layers will be quantized in")
    p.add_argument("--curve-rates", default="2,3,4",
                   help="target rates of the measured cost curves (default 2,3,4)")
    p.add_argument("--min-rate", type=float, default=1.0,
                   help="least rate of any layer (default 1: every quantizer can run it)")
    p.add_argument("--max-rate", type=float, default=8.0, help="greatest rate (default 8)")
    p.add_argument("--noise-scale", type=float, default=0.05,
                   help="noise std relative to a layer's output RMS (--sensitivity noise)")
    p.add_argument("--format", default="json", help="json, llama-cpp or gptqmodel")
    p.add_argument("--seed", type=int, default=0, help="seed of random rotations and noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--cache-dir", default=None, help="cache of Σ_X (as quantize-model)")
    p.add_argument("--out", required=True, help="file to write the plan to")
    p.add_argument("--save-costs", default=None, metavar="FILE",
                   help="also write the allocation inputs (allocation_costs.json: high-rate "
                        "statistics for identity and hadamard, the sensitivities, measured "
                        "curves with --cost measured) for the app")
    p.add_argument("--sensitivity-tokens", type=int, default=None,
                   help="measure sensitivities on the first N calibration tokens only "
                        "(default: all; recorded with --save-costs)")


def _check_choices(args) -> None:
    from .allocation import ALLOC_METHODS, COSTS, _check_budget
    from .rotations import ROTATIONS

    for value, choices, flag in ((args.sensitivity, SENSITIVITIES, "--sensitivity"),
                                 (args.cost, COSTS, "--cost"),
                                 (args.method, ALLOC_METHODS, "--method"),
                                 (args.format, FORMATS, "--format"),
                                 (args.rotation, ROTATIONS, "--rotation")):
        if value not in choices:
            raise WfvizError(f"Unknown {flag} {value!r}; use one of {', '.join(choices)}.")
    _check_budget(args.budget, args.min_rate, args.max_rate)
    if not args.text:
        raise WfvizError("Give the calibration text with --text FILE.")


def plan_text(plan, fmt: str) -> str:
    """The file content of a plan in one of :data:`FORMATS`.

    Examples
    --------
    >>> from wfviz.allocation import LayerCost, uniform_plan
    >>> p = uniform_plan([LayerCost("model.layers.0.mlp.up_proj", 0, "up", 8, 1., 0., 0.)], 3)
    >>> print(plan_text(p, "llama-cpp"), end="")
    --tensor-type ^blk\\.0\\.ffn_up\\.weight$=q2_K
    """
    import json

    from .plan_export import to_gptqmodel_dynamic, to_llama_cpp

    if fmt == "json":
        return plan.to_json() + "\n"
    if fmt == "gptqmodel":
        return json.dumps(to_gptqmodel_dynamic(plan), indent=1) + "\n"
    args = to_llama_cpp(plan)
    # one "--tensor-type PATTERN" per line: `llama-quantize $(cat PLAN) ...` splits on spaces
    # and newlines only, so the pattern's \ ^ $ reach llama-quantize untouched
    return "".join(f"{flag} {value}\n" for flag, value in zip(args[::2], args[1::2], strict=True))


def _sensitivity_windows(windows, tokens):
    """The calibration windows holding the first ``tokens`` tokens (all when None)."""
    if tokens is None:
        return windows
    if tokens < 2:
        raise WfvizError(f"--sensitivity-tokens must be at least 2, got {tokens}.")
    out, left = [], tokens
    for w in windows:
        if left <= 0:
            break
        out.append(w[:left])
        left -= len(out[-1])
    return out


def run_allocate(args):
    """Every check, then the model, Σ_X, sensitivities, costs and the plan; returns
    ``(plan, text, costs)`` without writing anything; ``costs`` is None, or the arguments of
    :func:`wfviz.allocation.save_costs` when ``--save-costs`` is given."""
    import time

    from .allocation import allocate, layer_costs, measured_costs
    from .collect import load_model
    from .device import resolve_device
    from .model_cache import model_fingerprint
    from .model_grid import parse_rates
    from .model_quant import one_shot_sigmas, sigma_cache_file
    from .model_text import load_texts
    from .sensitivity import fisher_sensitivity, noise_sensitivity

    _check_choices(args)
    curve_rates = parse_rates(args.curve_rates)
    dev = resolve_device(args.device)
    model, tokenizer, info = load_model(args.model, gguf_file=args.gguf_file, device=dev)
    # the evaluation span is unused here, but load_texts places the calibration span exactly
    # as quantize-model does, which keys the shared Σ_X cache
    texts = load_texts(tokenizer, text=args.text, calib_tokens=args.calib_tokens,
                       eval_tokens=2, seq_len=args.seq_len)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    sigmas = one_shot_sigmas(model, texts.calibration,
                             cache_file=sigma_cache_file(args.cache_dir, info, texts.spans, dtype))
    sens = None
    sens_windows = _sensitivity_windows(texts.calibration, getattr(args, "sensitivity_tokens",
                                                                   None))
    started = time.perf_counter()
    if args.sensitivity == "noise":
        sens = noise_sensitivity(model, sens_windows, scale=args.noise_scale, seed=args.seed)
    elif args.sensitivity == "fisher":
        sens = fisher_sensitivity(model, sens_windows)
    sens_s = time.perf_counter() - started
    common = {"method": args.method, "rotation": args.rotation, "seed": args.seed,
              "sensitivities": sens}
    chosen = measured_costs(model, sigmas, rates=curve_rates, device=args.device, **common) \
        if args.cost == "measured" else layer_costs(model, sigmas, **common)
    plan = allocate(chosen, args.budget, cost=args.cost, method=args.method,
                    min_rate=args.min_rate, max_rate=args.max_rate, model=info.get("label"),
                    model_fingerprint=model_fingerprint(info), sensitivity_name=args.sensitivity)
    costs = None
    if getattr(args, "save_costs", None):
        rots = {r: layer_costs(model, sigmas, method=args.method, rotation=r, seed=args.seed)
                for r in ("identity", "hadamard")}
        tokens = sum(len(w) for w in sens_windows)
        provenance = {
            "model": info.get("label"), "model_fingerprint": model_fingerprint(info),
            "dtype": dtype, "calibration": texts.spans.calibration.to_dict(),
            "seq_len": texts.spans.seq_len,
            "sigma": "one-shot Σ_X over the calibration span (as wfviz quantize-model)",
            "sensitivities": {"none": "s = 1 (pure layer MSE)"} | (
                {} if sens is None else {args.sensitivity: {
                    "tokens": tokens, "span": f"the first {tokens} of the "
                    f"{texts.spans.calibration.tokens} calibration tokens",
                    "seconds": round(sens_s, 1),
                    **({"scale": args.noise_scale, "seed": args.seed}
                       if args.sensitivity == "noise" else {})}}),
            "curves": {} if args.cost != "measured" else {
                f"{args.method}/{args.rotation}": {"target_rates": list(curve_rates),
                                                   "seed": args.seed}},
            "command": "wfviz allocate " + " ".join(_shown_args(args)),
            "date": time.strftime("%Y-%m-%d"), "wfviz": _version()}
        costs = {"layers": rots, "provenance": provenance,
                 "sensitivities": {} if sens is None else {args.sensitivity: sens},
                 "curves": {(args.method, args.rotation): chosen}
                 if args.cost == "measured" else {}}
    return plan, plan_text(plan, args.format), costs


def _version() -> str:
    from . import __version__

    return __version__


def _shown_args(args) -> list[str]:
    """The options as given, paths shortened to their names (provenance, no local paths)."""
    from pathlib import Path

    out = []
    for key, value in sorted(vars(args).items()):
        if value is None or key in ("command", "func", "out", "save_costs"):
            continue
        if key in ("model", "text", "cache_dir"):
            value = Path(str(value)).name
        out.append(f"--{key.replace('_', '-')} {value}")
    return out


def summary_text(plan) -> str:
    """One line per number a user checks first.

    Examples
    --------
    >>> from wfviz.allocation import LayerCost, allocate
    >>> print(summary_text(allocate([LayerCost("a", 0, "q", 8, 1., 0., 0.)], 3.0)))
    ... # doctest: +NORMALIZE_WHITESPACE
    waterfilling plan: 1 layers, budget 3.000 bits/weight, achieved 3.000
    rates from 3.000 to 3.000; water level θ = 0.0222
    predicted ΔNLL 0.1779 nats/token (uniform plan 0.1779, s=none)
    """
    rates = list(plan.rates.values())
    return (f"{plan.plan} plan: {len(rates)} layers, budget {plan.budget:.3f} bits/weight, "
            f"achieved {plan.average:.3f}\n"
            f"rates from {min(rates):.3f} to {max(rates):.3f}; water level θ = {plan.theta:.3g}\n"
            f"predicted ΔNLL {plan.predicted_dnll:.4g} nats/token (uniform plan "
            f"{plan.uniform_dnll:.4g}, s={plan.sensitivity})")
