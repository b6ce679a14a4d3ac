"""Rate metrics on rounded Gaussian columns: true entropy, plug-in and ``parametric_coded``.

Usage::

    .venv/bin/python benchmarks/bench_rate_metrics.py [--rows 256] [--cols 1536] [--seed 0]

For each rate R = 1..8 bits it draws an ``(rows, cols)`` matrix of i.i.d. ``N(0, r²)`` values,
rounds them, ``r`` chosen so that the exact entropy of one rounded value is R, and prints
(bits per weight, all measured in this one run):

- ``true``: that exact entropy;
- ``plug-in``: the mean per-column empirical entropy (the ``column_entropy`` metric without
  side information), and ``Δ`` = plug-in − true; ``model`` is
  :func:`wfviz.rates.plugin_entropy_bias`'s prediction of that shortfall;
- ``payload``: the real ``parametric_coded`` bitstream (constriction ANS, decoded and compared)
  without its side information, and ``Δ`` = payload − true;
- ``total``: payload plus side information (an fp16 scale and a family bit per column, a 64-bit
  header), and ``Δ`` = total − true;
- ``fast − real``: the ideal length of the fast path minus the real stream, in bits per matrix;
- the best-of-5 CPU time of this process (``time.process_time``, steadier than wall time on a
  shared machine) of the fast path (:func:`parametric_code_length`), the real coder
  (:func:`parametric_coded_bits`, encode + decode + compare) and, for scale,
  :func:`column_entropy_bits` (the plug-in metric).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _timing import best_of  # noqa: E402  (benchmarks/ is on sys.path)
from scipy.optimize import brentq

from wfviz.rates import (
    _rounded_gaussian_entropy_exact,
    column_entropy_bits,
    parametric_code_length,
    parametric_coded_bits,
    plugin_entropy_bias,
)


def cpu_best_of(fn, repeat: int = 5) -> float:
    """Least CPU time of ``repeat`` calls (wall time swings with other processes' load)."""
    return best_of(fn, repeat, clock=time.process_time)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=1536)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"i.i.d. rounded Gaussian columns, {args.rows} rows x {args.cols} columns, "
          f"seed {args.seed}; bits per weight")
    print("  R    true  plug-in      Δ   model  payload      Δ    total      Δ  fast−real"
          "  cpu: fast    real  plug-in")
    for rate in range(1, 9):
        r = brentq(lambda x, h=rate: _rounded_gaussian_entropy_exact(x) - h, 1e-3, 1e4,
                   xtol=1e-12)
        codes = np.rint(rng.standard_normal((args.rows, args.cols)) * r).astype(np.int64)
        true = _rounded_gaussian_entropy_exact(r)
        plugin = float(column_entropy_bits(codes).mean())
        model = float(plugin_entropy_bias([true], args.rows)[0])
        real, fast = parametric_coded_bits(codes), parametric_code_length(codes)
        payload, total = real.payload_bits / codes.size, real.total_bits / codes.size
        t_fast = cpu_best_of(lambda c=codes: parametric_code_length(c))
        t_real = cpu_best_of(lambda c=codes: parametric_coded_bits(c))
        t_plugin = cpu_best_of(lambda c=codes: column_entropy_bits(c))
        print(f"{rate:3d} {true:7.4f} {plugin:8.4f} {plugin - true:+7.4f} {-model:+7.4f} "
              f"{payload:8.4f} {payload - true:+7.4f} {total:8.4f} {total - true:+7.4f} "
              f"{real.payload_bits - fast.payload_bits:10.1f} {t_fast * 1e3:6.1f}ms "
              f"{t_real * 1e3:6.0f}ms {t_plugin * 1e3:7.1f}ms", flush=True)


if __name__ == "__main__":
    main()
