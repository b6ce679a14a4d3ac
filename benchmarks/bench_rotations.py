"""Time the structured randomized Hadamard rotation against a dense matmul of the same shape.

Usage: ``.venv/bin/python benchmarks/bench_rotations.py [--dtype float32] [--repeat 3]``

For each shape ``(rows, n)`` the script times ``Rotation.apply_weight`` (``W Qᵀ`` through the
Kronecker/butterfly factors, never building ``Q``) and ``W @ Qᵀ`` with a dense ``n × n`` ``Q``, on
torch tensors, in the same run, and prints their ratio (< 1 means the structured path is faster).
"""

from __future__ import annotations

import argparse

import torch
from _timing import best_of  # noqa: E402  (benchmarks/ is on sys.path)

from wfviz.rotations import get_rotation

SHAPES = ((4096, 4096), (256, 14336))



def time_shape(rows: int, n: int, dtype: torch.dtype, repeat: int) -> None:
    gen = torch.Generator().manual_seed(0)
    rot = get_rotation("hadamard", n, seed=0)
    w = torch.randn(rows, n, generator=gen, dtype=dtype)
    # Any dense n × n matrix costs the same to multiply by; a random one avoids building Q.
    q = torch.randn(n, n, generator=gen, dtype=dtype)
    structured = best_of(lambda: rot.apply_weight(w), repeat)
    dense = best_of(lambda: w @ q.T, repeat)
    print(f"{rows:>5} x {n:<6} {rot.label:<28} structured {structured * 1e3:8.1f} ms   "
          f"dense matmul {dense * 1e3:8.1f} ms   ratio {structured / dense:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}")
    for rows, n in SHAPES:
        time_shape(rows, n, getattr(torch, args.dtype), args.repeat)


if __name__ == "__main__":
    main()
