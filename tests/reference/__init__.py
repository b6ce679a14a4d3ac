"""Literal re-implementations of published algorithms, written from their descriptions, that
the tests (and the benchmarks) check wfviz against. They are slow on purpose: every step is
spelled out. They are not wfviz code and are not installed."""
