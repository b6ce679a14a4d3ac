"""Timing helper shared by the benchmark scripts (run them from the repository root)."""

import time


def best_of(fn, repeat: int = 3) -> float:
    """Fastest wall time of ``repeat`` calls of ``fn()``: the least disturbed by a busy machine."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
