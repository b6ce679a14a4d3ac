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


def run_allocate(args):
    """Every check, then the model, Σ_X, sensitivities, costs and the plan; returns
    ``(plan, text)`` without writing anything."""
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
    if args.sensitivity == "noise":
        sens = noise_sensitivity(model, texts.calibration, scale=args.noise_scale,
                                 seed=args.seed)
    elif args.sensitivity == "fisher":
        sens = fisher_sensitivity(model, texts.calibration)
    common = {"method": args.method, "rotation": args.rotation, "seed": args.seed,
              "sensitivities": sens}
    costs = measured_costs(model, sigmas, rates=curve_rates, device=args.device, **common) \
        if args.cost == "measured" else layer_costs(model, sigmas, **common)
    plan = allocate(costs, args.budget, cost=args.cost, method=args.method,
                    min_rate=args.min_rate, max_rate=args.max_rate, model=info.get("label"),
                    model_fingerprint=model_fingerprint(info), sensitivity_name=args.sensitivity)
    return plan, plan_text(plan, args.format)


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
