"""Timing helper shared by the benchmark scripts (run them from the repository root)."""

import time


def best_of(fn, repeat: int = 3, *, clock=time.perf_counter) -> float:
    """Least time of ``repeat`` calls of ``fn()``: the least disturbed by a busy machine.

    ``clock=time.process_time`` counts this process's CPU time instead of wall time.
    """
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best
