"""Speed and memory of GPTQ / GPTQ-EC / RTN and of the interactive sweep.

Every ratio is against ``T_mm``, the time of ``W @ Σ`` plus ``Σ @ Σ`` in the same dtype
(float32), measured in the same run on the same threads::

    .venv/bin/python benchmarks/bench_quantizers.py            # everything (a few minutes)
    .venv/bin/python benchmarks/bench_quantizers.py --quick    # n = 1024 instead of 4096
    .venv/bin/python benchmarks/bench_quantizers.py --memory   # n = 14336 sweep, peak RSS

Targets from the project issues: GPTQ at ``a = n = 4096`` on 2 threads ≤ 1.3 T_mm; the verb
users call, ``wfviz.quantize(W, Σ, "gptq", rate=4)`` with float64 numpy inputs at
``a = n = 4096``, end to end ≤ 0.8 × the time of a re-implementation of the authors'
``fasterquant`` (``tests/reference/fasterquant.py``) run in the same process; ``watersic`` at
one rate ≤ 1.3 × its own search; the sweep of 2 methods × 3 rotations × 6 rates (2..7) with
256 rows ≤ 2 s (warm) at n = 1536 and ≤ 10 s at n = 4096; n = 14336 with 256 rows below 8 GB
peak memory.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from _timing import best_of  # noqa: E402  (benchmarks/ is on sys.path)

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
from reference.fasterquant import fasterquant  # noqa: E402  (tests/ is on sys.path)

import wfviz  # noqa: E402
from wfviz.errors import WfvizError
from wfviz.experiments import sweep
from wfviz.quantizers.gptq import GPTQConfig, prepare_gptq, quantize_gptq
from wfviz.quantizers.gptq_ec import quantize_gptq_ec
from wfviz.quantizers.rtn import quantize_rtn
from wfviz.sources import resolve_source, synthetic

SWEEP = dict(methods="gptq-ec,watersic", rotations="identity,haar,hadamard",
             rates=[2, 3, 4, 5, 6, 7], rows=256)



def _sigma(n: int) -> torch.Tensor:
    return torch.from_numpy(synthetic("powerlaw", n, seed=0, basis="random").matrix)


def bench_methods(n: int) -> None:
    S64 = _sigma(n)
    W = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    S = S64.float()
    t_mm = best_of(lambda: (W @ S, S @ S))
    t_prep = best_of(lambda: prepare_gptq(S64, 0.01, dtype=torch.float32))
    t_gptq = best_of(lambda: quantize_gptq(W, S64, 4, rate_metric="log_cardinality"))
    prep = prepare_gptq(S64, 0.01, dtype=torch.float32)
    t_loop = best_of(lambda: quantize_gptq(W, S64, 4, prepared=prep))
    t_act = best_of(lambda: quantize_gptq(W, S64, 4, GPTQConfig(act_order=True,
                                                                  group_size=128)), 1)
    t_rtn = best_of(lambda: quantize_rtn(W, S64, 4))
    t_ec = best_of(lambda: quantize_gptq_ec(W, S64, 4.0, rate_metric="pooled_entropy"), 1)
    print(f"a = n = {n}, {torch.get_num_threads()} threads, GPTQ: float32 factor and loop "
          f"(as the authors' code); GPTQ-EC: float64 factor")
    print(f"  T_mm (W@Σ + Σ@Σ, float32)       {t_mm:8.3f} s   1.00 T_mm")
    for name, t in [("GPTQ 4 bit (factor + loop)", t_gptq), ("  of which factor (float32)", t_prep),
                    ("GPTQ loop only (prepared)", t_loop),
                    ("GPTQ act-order, groups of 128", t_act), ("RTN 4 bit", t_rtn),
                    ("GPTQ-EC 4 bit (step search)", t_ec)]:
        print(f"  {name:32s} {t:8.3f} s   {t / t_mm:5.2f} T_mm")


def bench_verb(n: int) -> None:
    """``wfviz.quantize`` end to end on float64 numpy inputs, against ``fasterquant``."""
    S = synthetic("powerlaw", n, seed=0, basis="random").matrix
    W = np.random.default_rng(0).standard_normal((n, n))
    W32, H32 = torch.from_numpy(W).float(), torch.from_numpy(2 * S).float()
    t_ref = best_of(lambda: fasterquant(W32, H32, 4))
    t_gptq = best_of(lambda: wfviz.quantize(W, S, "gptq", rate=4))
    t_ws = best_of(lambda: wfviz.quantize(W, S, "watersic", rate=4.0), 2)
    from wfviz.quantizers.watersic import quantize_watersic

    Wt, St = torch.from_numpy(W), torch.from_numpy(S)
    t_ws_search = best_of(lambda: quantize_watersic(Wt, St, 4.0), 2)
    print(f"the verb, a = n = {n}, float64 numpy in, {torch.get_num_threads()} threads")
    print(f"  fasterquant re-implementation (float32)   {t_ref:8.3f} s   1.00")
    print(f"  wfviz.quantize(W, Σ, 'gptq', rate=4)        {t_gptq:8.3f} s   {t_gptq / t_ref:.2f} "
          f"× fasterquant (target ≤ 0.8)")
    print(f"  quantize_watersic (search, no measuring)  {t_ws_search:8.3f} s   1.00")
    print(f"  wfviz.quantize(W, Σ, 'watersic', rate=4)  {t_ws:8.3f} s   {t_ws / t_ws_search:.2f} "
          f"× its own search (target ≤ 1.3)")


REAL_LAYER = "bundle:smollm2-135m-wikitext2/15/down"  # n = 1536: the app's default demo


def _sweep_source(n: int):
    if n == 1536:
        try:
            return resolve_source(REAL_LAYER)
        except WfvizError:  # bundle not installed: a synthetic layer of the same size
            pass
    return synthetic("powerlaw", n, seed=0, basis="random")


def bench_sweep(n: int) -> None:
    cov = _sweep_source(n)
    sweep(cov, **dict(SWEEP, rates=[3]))  # warm up: imports, thread pools, the Haar matrix
    start = time.perf_counter()
    rows = sweep(cov, **SWEEP)
    elapsed = time.perf_counter() - start
    per = {}
    for r in rows:
        per[r.method] = per.get(r.method, 0.0) + r.time_s
    parts = ", ".join(f"{m} {t:.2f} s" for m, t in per.items())
    print(f"sweep {cov.label}: {len(rows)} points in {elapsed:.2f} s ({parts})")


def _memory_child(n: int, rotations: str) -> None:
    cov = synthetic("powerlaw", n, seed=0, basis="random")
    start = time.perf_counter()
    rows = sweep(cov, **dict(SWEEP, rotations=rotations))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"sweep n = {n}: {len(rows)} points in {time.perf_counter() - start:.1f} s, "
          f"rotations {rotations}, peak RSS {peak_gb:.2f} GB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="n = 1024 for the method timings")
    p.add_argument("--memory", action="store_true", help="only the n = 14336 memory check")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rotations", default=SWEEP["rotations"], help="for --memory")
    p.add_argument("--verb", action="store_true", help="only the end-to-end verb timings")
    p.add_argument("--sweep", action="store_true", help="only the 36-point sweeps")
    p.add_argument("--child-memory", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_memory:
        _memory_child(args.child_memory, args.rotations)
        return
    if args.memory:
        subprocess.run([sys.executable, __file__, "--child-memory", "14336",
                        "--threads", str(args.threads), "--rotations", args.rotations],
                       check=True)
        return
    if args.verb:
        bench_verb(1024 if args.quick else 4096)
        return
    if args.sweep:
        bench_sweep(1536)
        if not args.quick:
            bench_sweep(4096)
        return
    bench_verb(1024 if args.quick else 4096)
    bench_methods(1024 if args.quick else 4096)
    bench_sweep(1536)
    if not args.quick:
        bench_sweep(4096)


if __name__ == "__main__":
    main()
