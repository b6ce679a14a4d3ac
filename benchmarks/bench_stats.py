"""Time `wfviz stats` (layer_stats, all rotations) and the D(R) curve against a matmul.

Usage: ``.venv/bin/python benchmarks/bench_stats.py [--n 4096] [--curve-n 14336]``

Every time is printed together with its ratio to one float64 ``n × n`` matmul measured in the
same run, so the ratios are comparable across machines.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _timing import best_of  # noqa: E402  (benchmarks/ is on sys.path)

from wfviz.covariance_io import validate_covariance
from wfviz.sources import synthetic
from wfviz.stats import layer_stats, rotated_d
from wfviz.waterfilling import distortion_rate_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--curve-n", type=int, default=14336)
    parser.add_argument("--points", type=int, default=200)
    args = parser.parse_args()

    n = args.n
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    t_matmul = best_of(lambda: a @ b, 3)
    print(f"reference: one float64 {n}x{n} matmul        {t_matmul:8.3f} s")

    def report(what: str, seconds: float) -> None:
        print(f"{what:<44}{seconds:8.3f} s  = {seconds / t_matmul:7.2f} matmuls")

    start = time.perf_counter()
    cov = synthetic("ar1", n, rho=0.9)  # full, correlated; no Haar basis change to build
    report(f"synthetic ar1 n={n} (Toeplitz + eigvalsh)", time.perf_counter() - start)

    start = time.perf_counter()
    validate_covariance(cov.matrix)
    report("validate_covariance (eigvalsh) of the matrix", time.perf_counter() - start)

    for rotation in ("identity", "haar", "hadamard", "eigenbasis", "act_order"):
        report(f"  rotated_d {rotation}", best_of(lambda r=rotation: rotated_d(cov, r), 1))

    start = time.perf_counter()
    stats = layer_stats(cov)
    t_stats = time.perf_counter() - start
    report(f"layer_stats, all 5 rotations (n={n})", t_stats)
    print("  gap_bits:", {k: round(v, 4) for k, v in stats["gap_bits"].items()})
    print(f"  budget < 10 s: {'OK' if t_stats < 10 else 'TOO SLOW'}")

    lam = np.sort(rng.gamma(0.5, size=args.curve_n))[::-1]
    rates = np.linspace(0.0, 8.0, args.points)
    t_curve = best_of(lambda: distortion_rate_curve(lam, rates), 5)
    report(f"D(R) curve, {args.points} points, n={args.curve_n}", t_curve)
    print(f"  budget < 50 ms: {'OK' if t_curve < 0.05 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
