"""Benchmark wfviz's WaterSIC: speed of one pass, quality and speed against the authors' algorithm.

Run from the repository root (about 5 minutes on 2 busy cores, most of it the reference)::

    .venv/bin/python benchmarks/bench_watersic.py
    .venv/bin/python benchmarks/bench_watersic.py --skip-4096 --skip-reference  # quick
    .venv/bin/python benchmarks/bench_watersic.py --rescaler-ablation           # default choice

Sections (every ratio is measured in this one run):

1. *Fixed-step pass* at a = n = 4096: one ``watersic_pass`` (float32, no search, no rescalers)
   against ``T_mm``, the time of ``W @ Σ`` plus ``Σ @ Σ`` in float32 (best of 3 each).
2. *Quality* at a = n = ``--quality-n``: ours (rate search on pooled entropy, rescalers on, the
   authors' side-information count) against ``tests/reference/watersic.py`` (re-implemented
   from the digest, not the authors' code) at target rates 2, 3, 4. The reference is run at the
   target and 0.1 bit above it; its ``log D`` is interpolated linearly at our measured rate.
3. *Speed end to end* at a = n = 2048, rate 3: ours (search + rescalers, best of 3) against the
   reference (one run).
4. *Gap to the IT limit* at 6 bits (column entropy), a = 4096, n = 512, power-law Σ in the
   identity, Haar and Hadamard bases; default config.
5. *Precision* (``--precision``): distortion of a float32 pass over a float64 pass at one step,
   a = n = 1024, three Haar-rotated Σ families, 4/8/10 bits, and what ``"auto"`` picks.
6. *Rescaler ablation* (``--rescaler-ablation``): column entropy at rates 2, 3, 4, 6, rescalers on
   versus off at the same measured rate (side information charged), i.i.d. Gaussian rows and rows
   with log-normal norms.

Σ is a Haar-rotated power-law spectrum (``synthetic:powerlaw?basis=random``); W has i.i.d.
N(0, 1) entries unless said otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _timing import best_of  # noqa: E402  (benchmarks/ is on sys.path)
from reference.watersic import reference_watersic  # noqa: E402  (tests/ is on sys.path)

from wfviz.quantizers.watersic import (  # noqa: E402
    WaterSICConfig,
    prepare_watersic,
    quantize_watersic,
    watersic_pass,
)
from wfviz.rotations import get_rotation  # noqa: E402
from wfviz.sources import synthetic  # noqa: E402
from wfviz.theory import WATERSIC_GAP_BITS, it_distortion  # noqa: E402


def _problem(n: int, a: int, seed: int = 0):
    sigma = torch.from_numpy(synthetic("powerlaw", n, seed=seed, basis="random").matrix)
    W = torch.randn(a, n, generator=torch.Generator().manual_seed(seed + 1))
    return W, sigma


def _distortion(W, W_hat, sigma) -> float:
    E = (W - W_hat).to(torch.float64)
    return float(((E @ sigma.to(torch.float64)) * E).sum()) / E.numel()



def bench_pass(n: int) -> None:
    W, sigma = _problem(n, n)
    prep = prepare_watersic(sigma)
    s32 = sigma.to(torch.float32)
    t_mm = best_of(lambda: W @ s32, 3) + best_of(lambda: s32 @ s32, 3)
    c = 2.0 ** -4 * float(torch.diagonal(prep.L).mean())
    t_pass = best_of(lambda: watersic_pass(W, prep, c, dtype=torch.float32), 3)
    print(f"[pass] a=n={n} float32: T_mm = {t_mm:.3f} s, pass = {t_pass:.3f} s, "
          f"pass / T_mm = {t_pass / t_mm:.2f} (target <= 1.6)")


def _ours(W, sigma, rate):
    cfg = WaterSICConfig(rescalers=True)
    start = time.perf_counter()
    out = quantize_watersic(W, sigma, rate, cfg, rate_metric="pooled_entropy")
    return out, time.perf_counter() - start


def bench_quality(n: int, rates) -> None:
    W, sigma = _problem(n, n, seed=2)
    for rate in rates:
        ours, _ = _ours(W, sigma, rate)
        d_ours = _distortion(W, ours.W_hat, sigma)
        refs = [reference_watersic(W, sigma, r) for r in (rate, rate + 0.1)]
        (r0, d0), (r1, d1) = ((x["rate"], x["loss"]) for x in refs)
        log_d = math.log(d0) + (math.log(d1) - math.log(d0)) * (ours.rate - r0) / (r1 - r0)
        print(f"[quality] a=n={n} target {rate}: ours {ours.rate:.4f} bits D={d_ours:.4e}; "
              f"reference {r0:.4f} bits D={d0:.4e}, {r1:.4f} bits D={d1:.4e}; "
              f"D_ours / D_ref(at our rate) = {d_ours / math.exp(log_d):.4f} (target <= 1.02)")


def bench_speed(n: int, rate: float) -> None:
    W, sigma = _problem(n, n, seed=3)
    _ours(W[:256, :256], sigma[:256, :256] + 0.1 * torch.eye(256, dtype=sigma.dtype), rate)
    # ours is the best of 3 (about 1.4 s each, so the machine's noise is ~10 % of it); the
    # reference runs once (70 s, where the same noise is well under 1 %)
    ours, t_ours = min((_ours(W, sigma, rate) for _ in range(3)), key=lambda r: r[1])
    start = time.perf_counter()
    ref = reference_watersic(W, sigma, rate)
    t_ref = time.perf_counter() - start
    d_ours = _distortion(W, ours.W_hat, sigma)
    d_ref_at_ours = ref["loss"] * 2.0 ** (-2 * (ours.rate - ref["rate"]))
    print(f"[speed] a=n={n} rate {rate}: ours {t_ours:.2f} s ({ours.info['search_passes']} passes, "
          f"{ours.info['rescaler_iterations']} rescaler iterations), reference {t_ref:.2f} s "
          f"({ref['evaluations']} search evaluations); speed-up = {t_ref / t_ours:.1f}x "
          f"(target >= 20); D_ours / D_ref = {d_ours / d_ref_at_ours:.4f} "
          f"(reference moved to our rate {ours.rate:.4f} with the 2^-2R slope)")


def bench_gap(n: int, a: int, rate: float) -> None:
    cov = synthetic("powerlaw", n, seed=6)
    sigma = torch.from_numpy(cov.matrix)
    W = torch.randn(a, n, generator=torch.Generator().manual_seed(7))
    gaps = {}
    for name in ("identity", "haar", "hadamard"):
        rot = get_rotation(name, n, seed=8)
        Wr, Sr = rot.apply_weight(W), rot.apply_sigma(sigma)
        out = quantize_watersic(Wr, Sr, rate)
        d_it = float(it_distortion(cov.eigenvalues, out.rate, float((W.double() ** 2).mean())))
        gaps[name] = 0.5 * math.log2(_distortion(Wr, out.W_hat, Sr) / d_it)
        print(f"[gap] a={a} n={n} {name}: {out.rate:.4f} bits (column entropy), gap to the IT "
              f"limit {gaps[name]:.4f} bit (theory {WATERSIC_GAP_BITS:.4f})")
    print(f"[gap] max - min over rotations = {max(gaps.values()) - min(gaps.values()):.4f} bit "
          f"(target <= 0.03)")


def bench_precision(n: int) -> None:
    """Float32 against float64 passes at one step: how much the distortion moves."""
    for family, params in (("powerlaw", {}), ("exponential", {"rate": 20.0}),
                           ("ar1", {"rho": 0.999})):
        sigma = torch.from_numpy(synthetic(family, n, basis="random", **params).matrix)
        W = torch.randn(n, n, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        prep = prepare_watersic(sigma)
        gm = math.exp(float(torch.log(torch.diagonal(prep.L)).mean()))
        for bits in (4, 8, 10):
            c = 2.0**-bits * math.sqrt(12) * gm
            d = {dt: _distortion(W, watersic_pass(W, prep, c, dtype=dt).W_hat, sigma)
                 for dt in (torch.float32, torch.float64)}
            auto = watersic_pass(W[:1], prep, c).dtype
            print(f"[precision] a=n={n} {family} ~{bits} bits: D_fp32 / D_fp64 - 1 = "
                  f"{d[torch.float32] / d[torch.float64] - 1:+.2e}; auto picks {auto}")


def bench_rescalers(n: int, rates) -> None:
    W, sigma = _problem(n, n, seed=4)
    row_norms = torch.exp(0.5 * torch.randn(n, 1, generator=torch.Generator().manual_seed(5)))
    prep = prepare_watersic(sigma)
    for label, weights in (("iid rows", W), ("log-normal row norms", W * row_norms)):
        for rate in rates:
            res = {}
            for on in (False, True):
                cfg = WaterSICConfig(rescalers=on)
                start = time.perf_counter()
                out = quantize_watersic(weights, sigma, rate, cfg, prepared=prep)
                res[on] = (out.rate, _distortion(weights, out.W_hat, sigma),
                           time.perf_counter() - start)
            (r_off, d_off, t_off), (r_on, d_on, t_on) = res[False], res[True]
            d_on_at_off = d_on * 2.0 ** (2 * (r_on - r_off))
            print(f"[rescalers] a=n={n} {label} rate {rate}: off {r_off:.4f} bits D={d_off:.4e} "
                  f"{t_off:.2f} s; on {r_on:.4f} bits D={d_on:.4e} {t_on:.2f} s; "
                  f"D_on / D_off at equal rate = {d_on_at_off / d_off:.4f} "
                  f"({0.5 * math.log2(d_on_at_off / d_off):+.4f} bit)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-4096", action="store_true", help="skip the a=n=4096 pass timing")
    parser.add_argument("--skip-reference", action="store_true",
                        help="skip the comparisons with the reference re-implementation")
    parser.add_argument("--quality-n", type=int, default=1024)
    parser.add_argument("--speed-n", type=int, default=2048)
    parser.add_argument("--rescaler-ablation", action="store_true")
    parser.add_argument("--precision", action="store_true",
                        help="float32 against float64 passes on three Σ families")
    parser.add_argument("--ablation-n", type=int, default=2048)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_4096:
        bench_pass(4096)
    bench_gap(512, 4096, 6.0)
    if not args.skip_reference:
        bench_quality(args.quality_n, (2.0, 3.0, 4.0))
        bench_speed(args.speed_n, 3.0)
    if args.precision:
        bench_precision(1024)
    if args.rescaler_ablation:
        bench_rescalers(args.ablation_n, (2.0, 3.0, 4.0, 6.0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
