"""Cross-layer bit allocation measured on perplexity: SmolLM2-135M, the whole-model protocol.

Usage::

    .venv/bin/python benchmarks/alloc_compare.py --budgets 2.5,3 [--method watersic]
        [--rotation hadamard] [--fisher-tokens 8192] [--cache-dir runs/cache]
        [--out runs/alloc-grid] [--text ../shared/data/wikitext-2-raw/wiki.test.raw]

Same model, text spans, window length and Σ_X cache as ``scripts/run_model_grid.sh`` (the
calibration span is tokens 0–32768, evaluation 32768–49152), so the uniform points of the
shipped grid are the baseline. For every budget it builds, from the high-rate cost model of
each layer's real weights and Σ_X:

- ``waterfill-none``: reverse waterfilling across layers with ``s_l = 1`` (pure layer MSE);
- ``waterfill-fisher``: the same with Fisher sensitivities (those stored in the bundle's
  ``allocation_costs.json``, else measured here on the first ``--fisher-tokens`` calibration
  tokens);
- ``heuristic``: +1 bit for v_proj and down_proj in the first and last eighth of the blocks and
  every third block, the rest lowered to keep the budget;

writes each plan to ``OUT/plans/`` and runs it through ``wfviz.run_model_grid`` (results in
``OUT``), and runs the greedy controller (remaining bits ÷ remaining weights, in processing
order) through ``quantize_model`` directly (``OUT/greedy-<budget>.json``). It then prints one
row per point with the measured rate, perplexity, KL and ΔNLL against the reference, the
predicted ΔNLL of the plan (Fisher units: nats per token), and the uniform point of the
shipped grid at the same budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
CALIB, EVAL, SEQ = 32768, 16384, 2048


def _plans(plain, fisher, budget, method, model_id, fingerprint):
    """``plain``: LayerCosts with s = 1; ``fisher``: the same with Fisher sensitivities."""
    from wfviz.allocation import allocate, heuristic_plan

    common = dict(method=method, model=model_id, model_fingerprint=fingerprint)
    return {
        "waterfill-none": allocate(plain, budget, min_rate=1.0, max_rate=8.0,
                                   sensitivity_name="none", **common),
        "waterfill-fisher": allocate(fisher, budget, min_rate=1.0, max_rate=8.0,
                                     sensitivity_name="fisher", **common),
        "heuristic": heuristic_plan(fisher, budget, sensitivity_name="fisher", **common),
    }


def _greedy(model, texts, sigmas, store, budget, method, rotation, out: Path) -> dict:
    from wfviz.allocation import GreedyRates
    from wfviz.model_cache import atomic_write_text
    from wfviz.model_eval import evaluate_model
    from wfviz.model_quant import (
        model_linears,
        quantize_model,
        restore_linears,
        snapshot_linears,
    )

    path = out / f"greedy-{budget:g}.json"
    if path.is_file():
        return json.loads(path.read_text())
    weights = {la.name: la.weights for la in model_linears(model)}
    snap = snapshot_linears(model)
    try:
        t0 = time.perf_counter()
        res = quantize_model(
            model, texts.calibration, method=method, rotation=rotation, sigmas=sigmas,
            plan=GreedyRates(weights, budget))
        ev = evaluate_model(model, texts.evaluation, reference=store)
    finally:
        restore_linears(model, snap)
    doc = {"id": f"greedy-{budget:g}", "budget": budget, "method": method, "rotation": rotation,
           "rate": res.rate, "rate_metric": res.layers[0].rate_metric, "nll": ev.nll,
           "ppl": ev.ppl, "kl": ev.kl, "eval_tokens": ev.tokens,
           "time_s": time.perf_counter() - t0, "layers": res.to_rows()}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="2.5,3")
    ap.add_argument("--method", default="watersic")
    ap.add_argument("--rotation", default="hadamard")
    ap.add_argument("--fisher-tokens", type=int, default=8192)
    ap.add_argument("--cache-dir", default=str(ROOT / "runs" / "cache"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "alloc-grid"))
    ap.add_argument("--grid", default=None, help="results of the uniform grid (default: shipped)")
    ap.add_argument("--text", default=str(TEXT))
    ap.add_argument("--plans-only", action="store_true",
                    help="write the plans and print their predictions; run nothing")
    args = ap.parse_args()
    from wfviz.allocation import layer_costs, shipped_costs
    from wfviz.collect import load_model
    from wfviz.model_cache import atomic_write_text, cache_key, cache_root, model_fingerprint
    from wfviz.model_eval import reference_store
    from wfviz.model_grid import ModelGridConfig, run_model_grid
    from wfviz.model_quant import one_shot_sigmas, sigma_cache_file
    from wfviz.model_results import load_results, shipped_results
    from wfviz.model_text import load_texts
    from wfviz.sensitivity import fisher_sensitivity
    from wfviz.weights import GGUF_FILE, gguf_path

    out = Path(args.out)
    (out / "plans").mkdir(parents=True, exist_ok=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    model_dir = str(gguf_path().parent)
    model, tok, info = load_model(model_dir, gguf_file=GGUF_FILE)
    texts = load_texts(tok, text=args.text, calib_tokens=CALIB, eval_tokens=EVAL, seq_len=SEQ)
    sigmas = one_shot_sigmas(model, texts.calibration, cache_file=sigma_cache_file(
        args.cache_dir, info, texts.spans, "float32"))
    stored = shipped_costs()
    if stored is not None and "fisher" in stored.sensitivities:
        # the bundle's stored inputs: the same Σ_X span, Fisher from its first calibration tokens
        plain = stored.layer_costs(args.rotation, "none")
        fisher = stored.layer_costs(args.rotation, "fisher")
    else:
        windows = texts.calibration[: max(1, args.fisher_tokens // SEQ)]
        s = fisher_sensitivity(model, windows)
        plain = layer_costs(model, sigmas, method=args.method, rotation=args.rotation)
        fisher = layer_costs(model, sigmas, method=args.method, rotation=args.rotation,
                             sensitivities=s)
    base = dict(model=model_dir, gguf_file=GGUF_FILE, text=args.text, calib_tokens=CALIB,
                eval_tokens=EVAL, seq_len=SEQ, methods=(args.method,),
                rotations=(args.rotation,), cache_dir=args.cache_dir, out=str(out), resume=True)
    predicted = {}
    for b in budgets:
        for name, plan in _plans(plain, fisher, b, args.method, info.get("label"),
                                 model_fingerprint(info)).items():
            path = out / "plans" / f"{name}-{b:g}.json"
            atomic_write_text(path, plan.to_json() + "\n")
            predicted[(name, b)] = plan
            rates = list(plan.rates.values())
            print(f"{b:g} {name}: mean {plan.average:.4f}, rates {min(rates):.2f}–"
                  f"{max(rates):.2f}, predicted ΔNLL {plan.predicted_dnll:.4f} "
                  f"(uniform {plan.uniform_dnll:.4f})", flush=True)
            if not args.plans_only:
                run_model_grid(ModelGridConfig(plan=str(path), **base))
    if args.plans_only:
        return
    store_dir = cache_root(args.cache_dir) / "logprobs" / cache_key({
        "kind": "reference log-probs", "model": model_fingerprint(info),
        "span": texts.spans.evaluation.to_dict(), "seq_len": SEQ, "dtype": "float32"})
    store, ref = reference_store(model, texts.evaluation, store_dir)  # cached by the grid
    greedy = {b: _greedy(model, texts, sigmas, store, b, args.method, args.rotation, out)
              for b in budgets}
    _report(load_results(out), greedy, predicted, ref,
            load_results(args.grid) if args.grid else shipped_results(), args)


def _report(results, greedy, predicted, ref, grid, args) -> None:
    """A Markdown table: one row per budget and plan; predictions in Fisher units (nats per
    token), none for s = 1 (its sum is layer MSE, not a loss) and for the greedy controller."""
    print(f"{args.method} · {args.rotation}; reference NLL {ref.nll:.4f} (perplexity "
          f"{ref.ppl:.2f}); ΔNLL in nats per token\n")
    print("| budget | plan | bits/weight | perplexity | KL | measured ΔNLL | predicted ΔNLL |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    by_label = {r["plan"]: r for r in results.points if r.get("plan")}
    budgets = sorted({b for _, b in predicted})
    for b in budgets:
        fisher = predicted[("waterfill-fisher", b)]
        uni = next((p for p in (grid.points if grid else []) if p["method"] == args.method
                    and p["rotation"] == args.rotation and p["calibration"] == "one-shot"
                    and not p.get("plan") and p.get("target_rate") == b), None)
        rows = [("uniform (the grid's point)", uni, fisher.uniform_dnll)]
        rows += [(name, by_label.get(f"{name}-{b:g}.json"),
                  predicted[(name, b)].predicted_dnll if name != "waterfill-none" else None)
                 for name in ("waterfill-none", "waterfill-fisher", "heuristic")]
        rows += [("greedy controller", greedy.get(b), None)]
        for name, row, pred in rows:
            if row is None:
                continue
            p = "—" if pred is None else f"{pred:.3f}"
            print(f"| {b:g} | {name} | {row['rate']:.3f} | {row['ppl']:.2f} | {row['kl']:.3f} | "
                  f"{row['nll'] - ref.nll:.3f} | {p} |")


if __name__ == "__main__":
    main()
