"""Counting bits honestly: four ways to measure the rate of integer codes.

Every rate in wfviz carries the name of the metric that counted it, and plots label their axis with
:func:`rate_axis_label`, so that entropies and grid sizes are never mixed silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .errors import WfvizError

RATE_METRICS = {
    "column_entropy": "per-column empirical entropy of the integer codes + side info",
    "pooled_entropy": "one histogram over all codes + side info, as the WaterSIC paper counts",
    "log_cardinality": "log2 of the number of grid levels + side info",
    "coded_bits": "actual ANS-coded size (constriction), code tables + side info included",
}

_AXIS_NAMES = {
    "column_entropy": "per-column entropy",
    "pooled_entropy": "pooled entropy",
    "log_cardinality": "log-cardinality",
    "coded_bits": "actual coded bits",
}


def check_metric(metric: str) -> None:
    """Raise unless ``metric`` is a name of :data:`RATE_METRICS`.

    Examples
    --------
    >>> check_metric("column_entropy")
    """
    if metric not in RATE_METRICS:
        raise WfvizError(f"Unknown rate metric '{metric}'; choose one of "
                         f"{', '.join(RATE_METRICS)}.")


def rate_axis_label(metric: str) -> str:
    """Axis title that says how the rate was counted.

    Examples
    --------
    >>> rate_axis_label("pooled_entropy")
    'rate (bits/weight, pooled entropy)'
    """
    check_metric(metric)
    return f"rate (bits/weight, {_AXIS_NAMES[metric]})"


def _as_int_array(codes) -> np.ndarray:
    arr = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.size == 0:
        raise WfvizError(f"Codes must be a non-empty (a, n) array, got shape {arr.shape}; pass "
                         "the integer codes of one weight matrix.")
    if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
        raise WfvizError("Codes must be integers (grid indices), not reconstructed weights; "
                         "pass the quantizer's integer codes.")
    return arr.astype(np.int64, copy=False)


# Above this many histogram cells, counting by sorting beats one big bincount.
_MAX_HISTOGRAM_CELLS = 1 << 26


def _column_counts(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero counts of each value per column, and the column each count belongs to."""
    n = arr.shape[1]
    lo = arr.min(axis=0)
    width = int((arr.max(axis=0) - lo).max()) + 1
    if width * n <= _MAX_HISTOGRAM_CELLS:
        # Small alphabets (the usual case): one bincount over (column, code) cells, no sort.
        # int32 halves the memory traffic; order "K" keeps a transposed array uncopied
        offset = (np.arange(n) * width - lo).astype(np.int32)
        cells = np.bincount(np.add(arr, offset, dtype=np.int32).ravel(order="K"),
                            minlength=width * n)
        hit = cells > 0
        return cells[hit], np.nonzero(hit)[0] // width
    s = np.sort(arr, axis=0)
    new = np.ones(s.shape, dtype=bool)
    new[1:] = s[1:] != s[:-1]
    counts = np.bincount(np.cumsum(new.ravel(order="F")) - 1)
    return counts, np.repeat(np.arange(n), new.sum(axis=0))


def column_entropy_bits(codes) -> np.ndarray:
    """Empirical entropy (bits per entry) of each column of an ``(a, n)`` integer array.

    Examples
    --------
    >>> column_entropy_bits(np.array([[0, 5], [1, 5], [2, 5], [3, 5]]))
    array([2., 0.])
    """
    arr = _as_int_array(codes)
    a, n = arr.shape
    counts, owner = _column_counts(arr)
    plogp = np.bincount(owner, weights=counts * np.log2(counts), minlength=n)
    return np.maximum(np.log2(a) - plogp / a, 0.0)


def pooled_entropy_bits(codes) -> float:
    """Empirical entropy (bits per entry) of all codes pooled into one histogram.

    Examples
    --------
    >>> pooled_entropy_bits(np.array([[0, 1], [0, 1]]))
    1.0
    """
    arr = _as_int_array(codes).ravel()[:, None]
    return float(column_entropy_bits(arr)[0])


@dataclass(frozen=True)
class CodedSize:
    """Actual size of an ANS bitstream: ``total_bits`` = payload + code tables."""

    total_bits: float
    column_bits: np.ndarray
    payload_bits: float
    table_bits: float


def _table_bits(alphabet: int, a: int) -> float:
    # Decoder needs each column's model: 32 bits for (min code, alphabet size) and one count per
    # symbol of the range, each count fitting in ceil(log2(a + 1)) bits.
    return 32.0 + alphabet * math.ceil(math.log2(a + 1))


def coded_bits(codes, *, per_column: bool = True) -> CodedSize:
    """Entropy-code the codes with constriction's ANS coder and return the real size.

    One empirical categorical model per column (or one for the whole matrix when
    ``per_column=False``). The stream is decoded again and compared with the input.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> size = coded_bits(rng.integers(-3, 4, size=(4000, 2)))
    >>> 2.8 < size.payload_bits / 8000 < 2.85
    True
    """
    import constriction  # a compiled module: its submodules are attributes, not importable

    Categorical = constriction.stream.model.Categorical
    AnsCoder = constriction.stream.stack.AnsCoder
    arr = _as_int_array(codes)
    columns = arr.T if per_column else arr.ravel()[None, :]
    a = columns.shape[1]
    models, symbols, tables = [], [], []
    for col in columns:
        lo = int(col.min())
        sym = (col - lo).astype(np.int32)
        counts = np.bincount(sym).astype(np.float64)
        # A one-symbol column is fully described by its table: nothing to encode.
        models.append(Categorical(counts / a, perfect=False) if counts.size > 1 else None)
        symbols.append(sym)
        tables.append(_table_bits(counts.size, a))
    coder = AnsCoder()
    payload = np.zeros(len(columns))
    for j in range(len(columns) - 1, -1, -1):
        if models[j] is None:
            continue
        before = coder.num_bits()
        coder.encode_reverse(symbols[j], models[j])
        payload[j] = coder.num_bits() - before
    decoder = AnsCoder(coder.get_compressed())
    for j, sym in enumerate(symbols):
        decoded = np.zeros_like(sym) if models[j] is None else decoder.decode(models[j], sym.size)
        if not np.array_equal(decoded, sym):
            raise RuntimeError("ANS round trip failed: the decoded codes differ from the input.")
    col_bits = payload + np.asarray(tables)
    if not per_column:
        col_bits = np.full(arr.shape[1], col_bits[0] / arr.shape[1])
    return CodedSize(float(col_bits.sum()), col_bits, float(payload.sum()), float(sum(tables)))


FAST_ESTIMATE_METRICS: frozenset = frozenset()
"""Metrics whose ``measure_rate(..., fast=True)`` is an estimate of the exact count."""


def measurable_entropy_bits(metric: str, a: int, m: int) -> float:
    """Most bits per code that ``metric`` can read from ``a`` rows of ``m`` coded columns.

    An empirical histogram of ``N`` codes has entropy at most ``log2 N``: ``N = a`` per column
    for ``column_entropy``, ``a·m`` for the one histogram of ``pooled_entropy`` and for the
    tables of ``coded_bits``. ``log_cardinality`` reads a grid, not codes (no limit).

    Examples
    --------
    >>> measurable_entropy_bits("column_entropy", 256, 10)
    8.0
    """
    check_metric(metric)
    if metric == "column_entropy":
        return math.log2(a)
    if metric in ("pooled_entropy", "coded_bits"):
        return math.log2(a * m)
    return math.inf


def measure_rate(codes, metric: str, *, side_info_bits: float = 0.0,
                 levels: int | None = None, fast: bool = False) -> tuple[float, np.ndarray]:
    """Bits per weight of ``(a, n)`` codes under ``metric``, side information included.

    Parameters
    ----------
    codes : array of int, shape (a, n)
    metric : {'column_entropy', 'pooled_entropy', 'log_cardinality', 'coded_bits'}
    side_info_bits : float
        Total side-information bits of the matrix (scales, steps), spread over all ``a·n``
        weights.
    levels : int, optional
        Number of grid levels; required by ``log_cardinality``.
    fast : bool
        Allow an estimate where the exact count is expensive (a step search's candidates);
        the final rate of a result is always counted exactly.

    Returns
    -------
    rate : float
        Bits per weight.
    column_rates : ndarray, shape (n,)
        Bits per weight of each column under the same metric. For ``pooled_entropy`` this is the
        per-column entropy (a pooled histogram has no per-column share), plus the side info.

    Examples
    --------
    >>> codes = np.array([[0, 1], [1, 1], [0, 1], [1, 1]])
    >>> measure_rate(codes, "column_entropy", side_info_bits=8.0)
    (1.5, array([2., 1.]))
    """
    check_metric(metric)
    arr = _as_int_array(codes)
    a, n = arr.shape
    side = side_info_bits / (a * n)
    if metric == "log_cardinality":
        if levels is None or levels < 1:
            raise WfvizError("The log_cardinality metric needs the number of grid levels; it "
                             "applies to fixed grids (rtn, gptq), so pick an entropy metric.")
        bits = np.full(n, math.log2(levels))
        return float(bits.mean() + side), bits + side
    if metric == "coded_bits":
        per_col = coded_bits(arr).column_bits / a
        return float(per_col.mean() + side), per_col + side
    col = column_entropy_bits(arr)
    rate = col.mean() if metric == "column_entropy" else pooled_entropy_bits(arr)
    return float(rate + side), col + side


_LOG2_RATIO_GRID = np.linspace(-8.0, 16.0, 481)


def _rounded_gaussian_entropy_exact(ratio: float) -> float:
    """Entropy (bits) of ``round(X)``, ``X ~ N(0, ratio²)``, summed over ±10σ of cells."""
    from scipy.special import ndtr

    half = np.ceil(10.0 * ratio) + 1
    k = np.arange(-half, half + 1)
    p = ndtr((k + 0.5) / ratio) - ndtr((k - 0.5) / ratio)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


# σ/c < 16: exact sums; above, the high-resolution formula is exact to 1e-5 bit
_H_GRID = np.array([_rounded_gaussian_entropy_exact(2.0**x) if x < 4.0
                    else x + 0.5 * np.log2(2 * np.pi * np.e) for x in _LOG2_RATIO_GRID])


def rounded_gaussian_entropy(ratio) -> np.ndarray:
    """Entropy (bits) of ``round(X / c)`` for ``X ~ N(0, σ²)``, as a function of ``σ / c``.

    ``log2(σ/c) + ½ log2(2πe)`` at high resolution, falling smoothly to 0 as ``σ/c → 0`` (a
    column far below the water costs nothing). Interpolated from a table on ``log2(σ/c)``
    (exact sums below ``σ/c = 16``), accurate to about 1e-3 bit: a model for first guesses of
    a quantizer's step, not a measurement.

    Examples
    --------
    >>> np.round(rounded_gaussian_entropy([1e-3, 1.0, 64.0]), 3).tolist()
    [0.0, 2.105, 8.047]
    """
    r = np.asarray(ratio, dtype=np.float64)
    with np.errstate(divide="ignore"):
        x = np.log2(np.maximum(r, 1e-300))
    return np.where(x > _LOG2_RATIO_GRID[-1], x + 0.5 * np.log2(2 * np.pi * np.e),
                    np.interp(x, _LOG2_RATIO_GRID, _H_GRID, left=0.0))


@lru_cache(maxsize=256)
def _plugin_bias_one(rate: float, rows: int, trials: int, seed: int) -> float:
    lo, hi = -10.0, 14.0  # log2(σ/c); the entropy grows with it
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if _rounded_gaussian_entropy_exact(2.0**mid) > rate else (mid, hi)
    ratio = 2.0 ** (0.5 * (lo + hi))
    codes = np.rint(np.random.default_rng(seed).standard_normal((rows, trials)) * ratio)
    codes = codes.astype(np.int64)
    return _rounded_gaussian_entropy_exact(ratio) - float(column_entropy_bits(codes).mean())


def plugin_entropy_bias(rates, rows: int, *, trials: int = 200, seed: int = 0) -> np.ndarray:
    """Expected shortfall (bits) of the plug-in entropy of ``rows`` codes of one column.

    Model: a column of ``rows`` i.i.d. Gaussian values rounded with the uniform step whose
    exact entropy is ``rate``; the shortfall is that entropy minus the mean plug-in
    (empirical-histogram) entropy over ``trials`` simulated columns. About
    ``(K − 1)/(2·rows·ln 2)`` for ``K`` used levels while ``K ≪ rows``; it is what makes
    per-column entropies read low at high rate with few rows (the ``column_entropy`` metric
    of a quantizer run with few rows has this bias).

    Examples
    --------
    >>> b = plugin_entropy_bias([2.0, 6.0], 256)
    >>> bool(0 < b[0] < 0.02 < b[1] < 0.6)
    True
    """
    return np.array([_plugin_bias_one(round(float(r), 3), int(rows), trials, seed)
                     for r in np.atleast_1d(rates)])


@lru_cache(maxsize=16)
def _plugin_bias_table(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`plugin_entropy_bias` on a grid of exact entropies (bits), for interpolation."""
    grid = np.arange(0.0, min(math.log2(rows) + 2.0, 16.0) + 1e-9, 0.25)
    return grid, plugin_entropy_bias(grid, rows)


def log2_step_for_entropy(log2_sigma, entropies, rows: int | None = None, *,
                          pooled: bool = False) -> list[float]:
    """``log2 c`` at which columns ``N(0, σ_i²)`` rounded with step ``c`` average ``h`` bits.

    A model for the first guesses of a step search: each column costs
    :func:`rounded_gaussian_entropy` of ``σ_i / c`` (which goes to 0 below the water instead
    of negative, as the high-resolution formula would); with ``rows``, minus the plug-in
    shortfall of an empirical histogram of ``rows`` codes (:func:`plugin_entropy_bias`), which
    is what the ``column_entropy`` metric measures (0.14 bit at 5 bits with 256 rows). With
    ``pooled``, the codes of all columns share one histogram (``pooled_entropy``): a mixture,
    whose entropy exceeds the columns' mean by their spread of scales; that is modelled
    exactly up to ``σ/c = 256`` (about 10 bits) and left to the search above. Solved by
    bisection for every target entropy.

    Parameters
    ----------
    log2_sigma : array_like, shape (m,)
        ``log2 σ_i`` of every column.
    entropies : sequence of float
        Target mean entropies per column (bits).
    rows : int, optional
        Codes per column histogram, to model the plug-in estimate.
    pooled : bool
        Model one histogram over all columns instead (``rows`` is then ignored).

    Returns
    -------
    list of float

    Examples
    --------
    >>> u = log2_step_for_entropy([0.0, 0.0], [4.0])[0]   # σ = 1: about 2^(2.05 − 4)
    >>> round(u, 2)
    -1.95
    >>> log2_step_for_entropy([0.0], [4.0], rows=256)[0] < u   # read low: a finer step
    True
    >>> log2_step_for_entropy([-2.0, 2.0], [3.0], pooled=True)[0] > log2_step_for_entropy(
    ...     [-2.0, 2.0], [3.0])[0]   # a mixture costs more than its columns: a coarser step
    True
    """
    log2_sigma = np.asarray(log2_sigma, dtype=np.float64)
    h = np.asarray(entropies, dtype=np.float64)[:, None]
    lo, hi = np.full_like(h, log2_sigma.min() - 40), np.full_like(h, log2_sigma.max() + 40)
    grid, bias = _plugin_bias_table(int(rows)) if rows is not None else (None, None)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        H = rounded_gaussian_entropy(2.0 ** (log2_sigma - mid))
        if rows is not None:
            H = H - np.interp(H, grid, bias)
        too_many = H.mean(1, keepdims=True) > h
        lo, hi = np.where(too_many, mid, lo), np.where(too_many, hi, mid)
    steps = (0.5 * (lo + hi))[:, 0].tolist()
    if not pooled:
        return steps
    return [_pooled_log2_step(log2_sigma, float(t), u) for t, u in zip(h[:, 0], steps,
                                                                       strict=True)]


_POOLED_MAX_RATIO = 256.0
_POOLED_COMPONENTS = 32


def _pooled_entropy(log2_ratio: np.ndarray) -> float:
    """Entropy of ``round(Y)``, Y an equal mixture of ``N(0, r_q²)``, ``r = 2^log2_ratio``."""
    from scipy.special import ndtr

    r = 2.0 ** log2_ratio
    half = int(np.ceil(8.0 * r.max())) + 1
    k = np.arange(-half, half + 1)
    p = (ndtr((k + 0.5) / r[:, None]) - ndtr((k - 0.5) / r[:, None])).mean(0)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _pooled_log2_step(log2_sigma: np.ndarray, h: float, u_columns: float) -> float:
    """Refine the per-column model's ``log2 c`` for one pooled histogram (see caller).

    The mixture's entropy is at least the columns' mean, so the step is at least
    ``u_columns``; ``_POOLED_COMPONENTS`` quantiles of ``log σ`` stand for the columns.
    """
    q = np.quantile(log2_sigma, (np.arange(_POOLED_COMPONENTS) + 0.5) / _POOLED_COMPONENTS)
    lo, hi = u_columns, u_columns + 2.0
    if 2.0 ** (q.max() - lo) > _POOLED_MAX_RATIO or _pooled_entropy(q - hi) > h:
        return u_columns
    for _ in range(25):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _pooled_entropy(q - mid) > h else (lo, mid)
    return 0.5 * (lo + hi)
