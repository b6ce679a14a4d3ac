"""Counting bits honestly: five ways to measure the rate of integer codes.

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
    "parametric_coded": "actual ANS-coded size (constriction) under a per-column quantized "
                        "Gaussian or Laplace model, its fp16 scale (16 bits) + side info included",
}

_AXIS_NAMES = {
    "column_entropy": "per-column entropy",
    "pooled_entropy": "pooled entropy",
    "log_cardinality": "log-cardinality",
    "coded_bits": "actual coded bits",
    "parametric_coded": "ANS-coded, parametric model",
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


def metric_name(metric: str) -> str:
    """A rate metric's short plain-language name (an unknown name comes back as it is).

    Examples
    --------
    >>> metric_name("log_cardinality")
    'log-cardinality'
    """
    return _AXIS_NAMES.get(metric, metric)


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


def column_entropy_bits(codes, *, miller_madow: bool = False) -> np.ndarray:
    """Empirical entropy (bits per entry) of each column of an ``(a, n)`` integer array.

    With ``miller_madow``, each column's ``(K − 1)/(2a ln 2)`` is added (``K`` occupied values,
    ``a`` rows): the first-order bias of the plug-in entropy, which reads low. An estimate of the
    entropy of the source the codes were drawn from, not a rate anyone can code at.

    Examples
    --------
    >>> column_entropy_bits(np.array([[0, 5], [1, 5], [2, 5], [3, 5]]))
    array([2., 0.])
    >>> column_entropy_bits(np.array([[0, 5], [1, 5]]), miller_madow=True).round(3).tolist()
    [1.361, 0.0]
    """
    arr = _as_int_array(codes)
    a, n = arr.shape
    counts, owner = _column_counts(arr)
    plogp = np.bincount(owner, weights=counts * np.log2(counts), minlength=n)
    plugin = np.maximum(np.log2(a) - plogp / a, 0.0)
    if not miller_madow:
        return plugin
    return plugin + (np.bincount(owner, minlength=n) - 1) / (2 * a * math.log(2))


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
    """Size of an ANS bitstream: ``total_bits`` = payload + the models the decoder needs.

    ``table_bits`` holds those models: count tables for ``coded_bits``, scale parameters,
    family bits and header for ``parametric_coded``.
    """

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


# --- parametric_coded: one ANS stream under per-column quantized Gaussian / Laplace models ---

PARAMETRIC_FAMILIES = ("gaussian", "laplace")
"""Model families of ``parametric_coded``, indexed by the per-column family bit."""

SCALE_PARAMETER_BITS = 16
"""Bits of one column's scale parameter: an IEEE half-precision (fp16) number."""

FAMILY_BITS = 1
"""Bits that tell the decoder which family of :data:`PARAMETRIC_FAMILIES` a column uses."""

BOUND_BITS = 64
"""Header of a ``parametric_coded`` stream: the largest ``|code|`` of the matrix (int64)."""

ANS_PRECISION = 24
"""Fixed-point precision (bits) of constriction's quantized Gaussian and Laplace models."""

MAX_SUPPORT = 1 << 14
"""Largest modelled ``|code|``: codes at or beyond it (only when the matrix has one beyond it)
are sent as the boundary symbol followed by ``|code| − MAX_SUPPORT`` in raw bits."""

_FP16_TINY = float(np.finfo(np.float16).tiny)  # 2^-14: a scale that puts all mass on 0
_FP16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ParametricModels:
    """What a ``parametric_coded`` decoder is told before the stream: its side information.

    Attributes
    ----------
    families : ndarray of int8, shape (n,)
        Index into :data:`PARAMETRIC_FAMILIES` for every column.
    scales : ndarray of float16, shape (n,)
        Each column's scale (Gaussian standard deviation or Laplace ``b``) in code units, exactly
        as stored and used by both encoder and decoder.
    bound : int
        Largest ``|code|`` of the matrix; the models live on ``[−support, support]``.
    """

    families: np.ndarray
    scales: np.ndarray
    bound: int

    @property
    def support(self) -> int:
        """Largest modelled ``|code|`` (at least 1: constriction needs two symbols)."""
        return min(max(self.bound, 1), MAX_SUPPORT)

    @property
    def escape_bits(self) -> int:
        """Raw bits after each boundary symbol: 0 unless some ``|code|`` exceeds the support."""
        return 0 if self.bound <= MAX_SUPPORT else (self.bound - MAX_SUPPORT).bit_length()

    @property
    def side_info_bits(self) -> float:
        """Scale and family bits of every column plus the header."""
        return float(self.scales.size * (SCALE_PARAMETER_BITS + FAMILY_BITS) + BOUND_BITS)


@dataclass(frozen=True)
class ParametricStream:
    """A ``parametric_coded`` bitstream: the side information and the ANS words."""

    shape: tuple[int, int]
    models: ParametricModels
    words: np.ndarray

    @property
    def payload_bits(self) -> float:
        """Size of the ANS words (32 bits each), the side information excluded."""
        return 32.0 * self.words.size


def _magnitude_histogram(arr: np.ndarray, support: int, clip: bool):
    """Counts of ``+m`` and ``−m`` per column for ``m = 0..min(max|code|, support)``.

    Returns ``(pos, neg, m, start)``: flat over the columns' dense ranges one after another
    (``|code|`` clipped to ``support`` when ``clip``), ``pos`` counting the zeros, and where
    each column's range starts.
    """
    src = np.clip(arr, -support, support) if clip else arr
    n = arr.shape[1]
    # One buffer for |code| that then becomes the cell index in place: every (a, n) temporary
    # costs page faults that outweigh the arithmetic.
    dtype = np.int32 if 2 * n * (support + 1) < 2**31 else np.int64
    idx = np.absolute(src, out=np.empty(arr.shape, dtype), casting="unsafe")
    lengths = idx.max(axis=0).astype(np.int64) + 1
    start = np.cumsum(lengths) - lengths
    total = int(lengths.sum())
    idx += start.astype(dtype)
    idx <<= 1
    idx += src < 0
    counts = np.bincount(idx.ravel(order="K"), minlength=2 * total).reshape(total, 2)
    m = np.arange(total) - np.repeat(start, lengths)
    return counts[:, 0], counts[:, 1], m, start


def _rounded_gaussian_second_moment(s: np.ndarray) -> np.ndarray:
    """``E[round(sZ)²]`` for ``Z ~ N(0, 1)`` (exact sums; Sheppard's ``s² + 1/12`` above 2)."""
    from scipy.special import ndtr

    k = np.arange(1, 40)[:, None]
    p = ndtr(-(k - 0.5) / s) - ndtr(-(k + 0.5) / s)
    return np.where(s > 2.0, s * s + 1.0 / 12.0, 2.0 * (k * k * p).sum(axis=0))


_LOG2_S_GRID = np.linspace(-5.0, 1.5, 651)
_LOG2_M2_GRID = np.log2(_rounded_gaussian_second_moment(2.0**_LOG2_S_GRID))


def _gaussian_scales(m2: np.ndarray) -> np.ndarray:
    """Gaussian scale whose rounded second moment is ``m2`` (moments; 0 for ``m2 = 0``)."""
    with np.errstate(divide="ignore"):
        low = 2.0 ** np.interp(np.log2(m2), _LOG2_M2_GRID, _LOG2_S_GRID, left=-np.inf)
    return np.where(m2 > 4.0, np.sqrt(np.maximum(m2 - 1.0 / 12.0, 0.0)), low)


def _laplace_scales(zeros: np.ndarray, abs_sum: np.ndarray, rows: int) -> np.ndarray:
    """Maximum-likelihood ``b`` of a centred Laplace rounded to the integers (0 if all zero).

    With ``x = e^{−1/(2b)}``, ``P(0) = 1 − x`` and ``P(±m) = ½ x^{2m}(1/x − x)``; setting the
    derivative of the log-likelihood to 0 gives ``(a + 2S)x² + n₀x − (2S − a + n₀) = 0`` for
    ``n₀`` zeros and ``S = Σ|k|`` over ``a`` codes.
    """
    quad = rows + 2.0 * abs_sum
    c = 2.0 * abs_sum - rows + zeros
    x = (np.sqrt(zeros * zeros + 4.0 * quad * c) - zeros) / (2.0 * quad)
    with np.errstate(divide="ignore"):
        return np.where(x > 0, -0.5 / np.log(np.where(x > 0, x, 0.5)), 0.0)


def _as_fp16(scales: np.ndarray) -> np.ndarray:
    return np.clip(scales, _FP16_TINY, _FP16_MAX).astype(np.float16)


def _upper_tails(family: int, half: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``1 − F(m + ½)`` of the centred model (``half = m + ½``, per-entry scale), as
    constriction evaluates ``F(−m − ½)``; computed in one buffer."""
    from scipy.special import erfc

    z = np.divide(half, scale)
    if family == 0:
        z *= 1.0 / math.sqrt(2.0)
        erfc(z, out=z)
    else:
        np.negative(z, out=z)
        np.exp(z, out=z)
    z *= 0.5
    return z


def _family_bits(tail: np.ndarray, pos, neg, start: np.ndarray, edges: np.ndarray,
                 support: int) -> np.ndarray:
    """Bits of each column's codes under constriction's leaky 24-bit quantization.

    constriction gives symbol ``k`` of ``[−S, S]`` the integer mass ``C(k+1) − C(k)`` with
    ``C(k) = ⌊free·F(k − ½)⌋ + (k + S)``, ``free = 2^24 − (2S + 1)``, ``C(−S) = 0`` and
    ``C(S + 1) = 2^24``; ``F(−x) = 1 − F(x)`` for these centred models, so ``tail`` (the
    upper tail at ``m + ½`` of every dense cell, columns one after another from ``start``)
    gives every mass. ``edges`` are the cells with ``m = S``.
    """
    one = float(1 << ANS_PRECISION)
    free = one - (2 * support + 1)
    f_lo = np.floor(free * tail)                  # ⌊free·F(−m − ½)⌋
    f_hi = np.subtract(1.0, tail)                 # F(m + ½), rounded to 1 as constriction does
    f_hi *= free
    np.floor(f_hi, out=f_hi)                      # ⌊free·F(m + ½)⌋
    q_pos = np.empty_like(tail)
    np.subtract(f_hi[1:], f_hi[:-1], out=q_pos[1:])  # +m, m ≥ 1: F(m + ½) − F(m − ½)
    q_pos[start] = f_hi[start] - f_lo[start]          # +0: F(½) − F(−½)
    q_pos += 1.0
    q_neg = np.empty_like(tail)
    np.subtract(f_lo[:-1], f_lo[1:], out=q_neg[1:])  # −m: F(−m + ½) − F(−m − ½)
    q_neg += 1.0
    q_neg[start] = 1.0                                # no −0: any positive mass will do
    q_pos[edges] = one - f_hi[edges - 1] - 2 * support
    q_neg[edges] = f_lo[edges - 1] + 1.0
    np.log2(q_pos, out=q_pos)
    q_pos *= pos
    np.log2(q_neg, out=q_neg)
    q_neg *= neg
    q_pos += q_neg
    return ANS_PRECISION * np.add.reduceat(pos + neg, start) - np.add.reduceat(q_pos, start)


def _fit_parametric(arr: np.ndarray) -> tuple[ParametricModels, np.ndarray]:
    """Per-column models and each column's ideal payload bits under them (see caller)."""
    a, n = arr.shape
    bound = max(int(arr.max()), -int(arr.min()))
    support = min(max(bound, 1), MAX_SUPPORT)
    pos, neg, m, start = _magnitude_histogram(arr, support, clip=bound > MAX_SUPPORT)
    count = (pos + neg).astype(np.float64)
    half = m + 0.5
    abs_sum = np.add.reduceat(count * m, start)
    m2 = np.add.reduceat(count * m * m, start) / a
    scales = np.stack([_as_fp16(_gaussian_scales(m2)),
                       _as_fp16(_laplace_scales(count[start], abs_sum, a))])
    lengths = np.diff(np.append(start, m.size))
    edges = np.flatnonzero(m == support)
    bits = np.stack([
        _family_bits(_upper_tails(f, half, np.repeat(scales[f].astype(np.float64), lengths)),
                     pos, neg, start, edges, support)
        for f in range(len(PARAMETRIC_FAMILIES))])
    family = np.argmin(bits, axis=0).astype(np.int8)
    chosen = bits[family, np.arange(n)]
    if bound > MAX_SUPPORT:  # every |code| >= support also sends its excess in raw bits
        escapes = np.zeros(n)
        escapes[np.searchsorted(start, edges, side="right") - 1] = count[edges]
        chosen = chosen + escapes * (bound - MAX_SUPPORT).bit_length()
    models = ParametricModels(family, scales[family, np.arange(n)], bound)
    return models, chosen


def _parametric_size(models: ParametricModels, column_payload: np.ndarray,
                     payload_bits: float) -> CodedSize:
    side = models.side_info_bits
    n = column_payload.size
    # the stream's few bits of termination overhead are shared evenly by the columns
    cols = column_payload + (payload_bits - column_payload.sum()) / n + side / n
    return CodedSize(float(payload_bits + side), cols, float(payload_bits), side)


def parametric_code_length(codes) -> CodedSize:
    """Ideal ``parametric_coded`` size: fast, for a quantizer's step search.

    The bits that :func:`parametric_coded_bits` would produce, computed from per-column
    histograms of ``|code|`` without running the coder: every column's models are fitted
    (Gaussian scale from the second moment of the rounded values, Laplace ``b`` by maximum
    likelihood of the rounded Laplace; both closed forms on the histogram), rounded
    to fp16, and the code length ``−Σ log2 q(k)`` is summed with exactly the 24-bit
    probabilities ``q`` constriction uses; each column keeps the shorter family. It misses
    only the ANS stream's termination (at most 64 bits per matrix).

    Parameters
    ----------
    codes : array of int, shape (a, n)

    Returns
    -------
    CodedSize
        ``table_bits`` holds the side information (fp16 scale and family bit per column,
        64-bit header); ``column_bits`` is each column's payload plus its share of it.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> size = parametric_code_length(np.rint(rng.standard_normal((256, 64)) * 8))
    >>> round(size.payload_bits / (256 * 64), 2), size.table_bits
    (5.04, 1152.0)
    """
    models, column_payload = _fit_parametric(_as_int_array(codes))
    return _parametric_size(models, column_payload, float(column_payload.sum()))


def _family_runs(families: np.ndarray) -> list[tuple[int, int]]:
    """``[(first, stop), ...]`` column ranges of equal family, in order."""
    cuts = np.flatnonzero(np.diff(families)) + 1
    edges = [0, *cuts.tolist(), families.size]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _constriction_family(family: int, support: int):
    import constriction  # a compiled module: its submodules are attributes, not importable

    model = constriction.stream.model
    cls = model.QuantizedGaussian if family == 0 else model.QuantizedLaplace
    return cls(-support, support)


_CHUNK_BITS = 16  # raw escape bits go through the coder in uniform chunks of at most 16 bits


def _chunk_widths(bits: int) -> np.ndarray:
    """Widths of the uniform chunks that carry ``bits`` raw bits (all 16 but the last)."""
    widths = [_CHUNK_BITS] * (bits // _CHUNK_BITS)
    return np.array(widths + ([bits % _CHUNK_BITS] if bits % _CHUNK_BITS else []))


def _escape_chunks(excess: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunks (least significant first) of every escaped excess, and each chunk's alphabet."""
    widths = _chunk_widths(bits)
    shifts = (np.cumsum(widths) - widths).astype(np.uint64)
    masks = (np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1)
    parts = (excess.astype(np.uint64)[:, None] >> shifts) & masks
    sizes = np.tile((1 << widths).astype(np.int32), excess.size)
    return parts.astype(np.int32).ravel(), sizes


def _escape_values(chunks: np.ndarray, bits: int) -> np.ndarray:
    widths = _chunk_widths(bits)
    shifts = np.cumsum(widths) - widths
    return (chunks.astype(np.int64).reshape(-1, widths.size) << shifts).sum(axis=1)


def encode_parametric(codes) -> ParametricStream:
    """Encode a matrix of integer codes into one ``parametric_coded`` ANS bitstream.

    Columns are coded one after another in one constriction ANS stream (so that the stream's
    termination is paid once per matrix), each under its own centred quantized Gaussian or
    Laplace with the fp16 scale of :class:`ParametricModels`, on the support
    ``[−S, S]``, ``S = min(max |code|, MAX_SUPPORT)``. Codes with ``|k| ≥ S`` when the matrix
    exceeds :data:`MAX_SUPPORT` are sent as ``±S`` followed by ``|k| − S`` in
    ``ParametricModels.escape_bits`` raw bits, after all columns.

    No mean parameter: the columns of weight matrices are centred. In SmolLM2's blocks 0, 15
    and 29 the median ``|mean|/std`` of a column is about 0.025 (sampling noise at 576–3072
    rows); centring the model at 0 costs 0.001–0.005 bit per weight there, less than a 16-bit
    mean per column would (0.005–0.03 bit per weight).

    Examples
    --------
    >>> codes = np.array([[0, 3], [1, -2], [-1, 7]])
    >>> stream = encode_parametric(codes)
    >>> np.array_equal(decode_parametric(stream), codes)
    True
    """
    arr = _as_int_array(codes)
    return _encode(arr, _fit_parametric(arr)[0])


def _encode(arr: np.ndarray, models: ParametricModels) -> ParametricStream:
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    support = models.support
    flat = arr.T.reshape(-1)  # column after column
    symbols = (np.sign(flat) * np.minimum(np.abs(flat), support)).astype(np.int32)
    a = arr.shape[0]
    if models.escape_bits:  # encoded first, so decoded last
        escaped = np.abs(flat) >= support
        chunks, sizes = _escape_chunks(np.abs(flat[escaped]) - support, models.escape_bits)
        coder.encode_reverse(chunks, constriction.stream.model.Uniform(), sizes)
    scales = models.scales.astype(np.float64)
    for first, stop in reversed(_family_runs(models.families)):
        family = int(models.families[first])
        scale = np.repeat(scales[first:stop], a)
        coder.encode_reverse(symbols[first * a:stop * a],
                             _constriction_family(family, support), np.zeros_like(scale), scale)
    return ParametricStream(arr.shape, models, coder.get_compressed())


def decode_parametric(stream: ParametricStream) -> np.ndarray:
    """Decode a :class:`ParametricStream` back into its ``(a, n)`` int64 codes.

    Examples
    --------
    >>> decode_parametric(encode_parametric(np.array([[5], [-5]]))).ravel().tolist()
    [5, -5]
    """
    import constriction

    a, n = stream.shape
    models = stream.models
    support = models.support
    coder = constriction.stream.stack.AnsCoder(stream.words)
    scales = models.scales.astype(np.float64)
    parts = []
    for first, stop in _family_runs(models.families):
        scale = np.repeat(scales[first:stop], a)
        parts.append(coder.decode(_constriction_family(int(models.families[first]), support),
                                  np.zeros_like(scale), scale))
    flat = np.concatenate(parts).astype(np.int64)
    if models.escape_bits:
        escaped = np.abs(flat) >= support
        sizes = np.tile(1 << _chunk_widths(models.escape_bits), int(escaped.sum()))
        chunks = coder.decode(constriction.stream.model.Uniform(), sizes.astype(np.int32))
        excess = _escape_values(chunks, models.escape_bits)
        flat[escaped] = np.sign(flat[escaped]) * (support + excess)
    return flat.reshape(n, a).T


def parametric_coded_bits(codes) -> CodedSize:
    """Real ``parametric_coded`` size: encode with constriction, decode, compare, count.

    Raises ``RuntimeError`` if the decoded codes differ from the input. ``column_bits`` are the
    ideal per-column lengths of :func:`parametric_code_length` with the stream's termination
    overhead spread evenly, so that they add up to the real size.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> codes = np.rint(rng.standard_normal((256, 64)) * 8)
    >>> real, fast = parametric_coded_bits(codes), parametric_code_length(codes)
    >>> 0 <= real.payload_bits - fast.payload_bits <= 64
    True
    """
    arr = _as_int_array(codes)
    models, column_payload = _fit_parametric(arr)
    stream = _encode(arr, models)
    if not np.array_equal(decode_parametric(stream), arr):
        raise RuntimeError("ANS round trip failed: the decoded codes differ from the input.")
    return _parametric_size(models, column_payload, stream.payload_bits)


def model_side_bits(metric: str, a: int, n: int) -> float:
    """Side information of the metric's own model, in bits per weight of an ``(a, n)`` code
    matrix: ``parametric_coded``'s scale and family bits per column and its header; 0 for the
    others (``coded_bits`` counts its tables in its payload).

    Examples
    --------
    >>> model_side_bits("parametric_coded", 256, 8) == (8 * 17 + 64) / (256 * 8)
    True
    """
    check_metric(metric)
    if metric != "parametric_coded":
        return 0.0
    return (n * (SCALE_PARAMETER_BITS + FAMILY_BITS) + BOUND_BITS) / (a * n)


FAST_ESTIMATE_METRICS: frozenset = frozenset()
"""Metrics whose ``measure_rate(..., exact=False)`` is an estimate to be re-counted exactly for a
reported rate (none: ``parametric_coded``'s fast count is the bound wfviz reports)."""

ANS_TERMINATION_BITS = 64
"""The end of an ANS stream of 32-bit words: at most this many bits above the ideal length."""


def _bounded(size: CodedSize) -> CodedSize:
    """``size`` plus the stream termination, spread over the columns: a bound on the real stream."""
    extra = ANS_TERMINATION_BITS / size.column_bits.size
    return CodedSize(size.total_bits + ANS_TERMINATION_BITS, size.column_bits + extra,
                     size.payload_bits + ANS_TERMINATION_BITS, size.table_bits)


def measurable_entropy_bits(metric: str, a: int, m: int) -> float:
    """Most bits per code that ``metric`` can read from ``a`` rows of ``m`` coded columns.

    An empirical histogram of ``N`` codes has entropy at most ``log2 N``: ``N = a`` per column
    for ``column_entropy``, ``a·m`` for the one histogram of ``pooled_entropy`` and for the
    tables of ``coded_bits``. ``log_cardinality`` reads a grid and ``parametric_coded`` a
    model, not a histogram: no limit.

    Examples
    --------
    >>> measurable_entropy_bits("column_entropy", 256, 10)
    8.0
    >>> measurable_entropy_bits("parametric_coded", 256, 10)
    inf
    """
    check_metric(metric)
    if metric == "column_entropy":
        return math.log2(a)
    if metric in ("pooled_entropy", "coded_bits"):
        return math.log2(a * m)
    return math.inf


def measure_rate(codes, metric: str, *, side_info_bits: float = 0.0,
                 levels: int | None = None, exact: bool = False) -> tuple[float, np.ndarray]:
    """Bits per weight of ``(a, n)`` codes under ``metric``, side information included.

    Parameters
    ----------
    codes : array of int, shape (a, n)
    metric : {'column_entropy', 'pooled_entropy', 'log_cardinality', 'coded_bits', \
'parametric_coded'}
    side_info_bits : float
        Total side-information bits of the matrix (scales, steps), spread over all ``a·n``
        weights.
    levels : int, optional
        Number of grid levels; required by ``log_cardinality``.
    exact : bool
        For ``parametric_coded`` only: True runs the real coder and checks the round trip
        (:func:`parametric_coded_bits`); False (the default) counts the ideal length under the
        same transmitted models plus :data:`ANS_TERMINATION_BITS` for the end of the stream
        (:func:`parametric_code_length`, about 20 times faster), a bound that the real stream
        never exceeds and stays within 64 bits of (tested). Every rate wfviz reports for this
        metric is that bound. The other metrics are computed one way only.

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
    if metric in ("coded_bits", "parametric_coded"):
        if metric == "coded_bits":
            size = coded_bits(arr)
        else:
            size = parametric_coded_bits(arr) if exact else _bounded(parametric_code_length(arr))
        per_col = size.column_bits / a
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
