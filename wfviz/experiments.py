"""Distortion-rate sweeps: methods × rotations × rates on one Σ_X, as a tidy table.

The weights are i.i.d. ``N(0, 1)`` rows (``rows``, ``seed``) unless a ``W`` is given. Each row
of the table compares the measured distortion with the information-theoretic limit at the
*measured* rate: ``it_limit`` is the exact reverse-waterfilling distortion of the eigenvalues of
Σ with the per-entry variance ``σ² = mean(W²)`` (the theory's model is rows i.i.d.
``N(0, σ² I)``), and ``gap_bits = ½ log2(distortion / it_limit)``.

``predicted_gap_bits`` is the high-rate theory of the gap at the *payload* rate
(``payload_gap_bits``: the rate minus the side information, which is O(1/a) and which the
theory ignores): WaterSIC ``½ log2(2πe/12) ≈ 0.2546`` in every basis; entropy-coded GPTQ that
plus ``½ log2(AM(d)/GM(d))`` with ``d_j = Var(X_j | X_{j+1..})`` in the rotated basis, i.e.
``1/U_jj²`` of the GPTQ factor (damped as GPTQ-EC's default, 1e-4). For weights that are
given (real layers, not the theory's Gaussian rows), each rotated column's entropy power
enters next to ``d_j`` (``docs/theory.md`` §7).
That is the Cholesky diagonal of Σ in *reversed* column order, because GPTQ decides the columns
first to last; its geometric mean is the same as in natural order but its AM is not. For GPTQ
and RTN, whose rate is a grid's, the same GPTQ-EC formula is given as a reference only (column
``prediction``).

Work shared across rates: the rotation and the method's Σ-only preparation (Cholesky) are done
once per rotation, and the entropy-coded methods (GPTQ-EC, WaterSIC) search all rates
together in stacked passes. Dead features are taken out before rotating
(:func:`wfviz.basis.working_basis`), as :func:`wfviz.quantize` does.

:func:`iter_sweep` yields :class:`SweepPoint` records as each (rotation group, method)
finishes, so that a cancelled run keeps what finished; :func:`sweep` collects them (and, when
cancelled, attaches the finished points to the :class:`~wfviz.errors.Cancelled` it raises as
``exc.points``). :func:`gap_table` is the measured gap by rate and rotation that the app shows.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from .basis import WorkingBasis, working_basis
from .device import float64_device, iter_with_oom_fallback, resolve_device
from .errors import Cancelled, WfvizError, notify
from .quantize_layer import damping_notice, make_config, sigma_and_rotation_basis
from .quantizers import get_method
from .quantizers.base import cholesky_ex
from .quantizers.gptq import GPTQPrepared
from .quantizers.gptq_ec import GPTQECConfig, prepare_gptq_ec
from .rates import RATE_METRICS, column_entropy_bits, model_side_bits
from .rotations import ROTATIONS
from .theory import (
    WATERSIC_GAP_BITS,
    cholesky_diag,
    column_entropy_powers,
    gptq_ec_distortion_from_entropy,
    gptq_gap_bits,
    it_distortion,
    watersic_distortion_from_entropy,
)
from .validation import as_float64, check_weights

_ENTROPY_METHODS = ("gptq-ec", "watersic")


@dataclass(frozen=True)
class SweepPoint:
    """One measured point of a sweep.

    Attributes
    ----------
    method, rotation : str
    target_rate : float
        What was asked (grid bits for rtn/gptq, measured bits otherwise).
    rate : float
        Measured bits per weight under ``rate_metric``, side information included.
    rate_metric : str
    distortion : float
        ``tr((W−Ŵ)Σ(W−Ŵ)ᵀ)/(a·n)``, float64.
    relative_distortion : float
        ``distortion / (tr(WΣWᵀ)/(a·n))``.
    it_limit : float
        Reverse-waterfilling distortion of the eigenvalues at the measured rate, with the
        weights' per-entry variance.
    gap_bits : float
        ``½ log2(distortion / it_limit)``.
    side_bits : float
        Side information in bits per weight: the method's (scales, steps, dead indices) and the
        metric's own model (``parametric_coded``). It is O(1/a) and the theory ignores it.
    payload_gap_bits : float
        The gap at the payload rate ``rate − side_bits``: what the high-rate theory predicts.
    predicted_gap_bits : float
        The high-rate prediction of ``payload_gap_bits`` (see the module docstring).
    prediction : str
        What kind of prediction it is.
    time_s : float
        This point's share of the wall time.
    columns : dict or None
        With ``keep_columns``: ``"column_entropy"`` (per-column empirical entropy of the codes,
        bits, no side information) and, for WaterSIC, ``"d"`` (the ``d_j = L_jj²`` of the damped
        Σ it factored, from its steps ``(c/α_j)²``; dead columns get the damping).
    """

    method: str
    rotation: str
    target_rate: float
    rate: float
    rate_metric: str
    distortion: float
    relative_distortion: float
    it_limit: float
    gap_bits: float
    side_bits: float
    payload_gap_bits: float
    predicted_gap_bits: float
    prediction: str
    time_s: float
    columns: dict | None = field(default=None, compare=False, repr=False)

    def as_row(self) -> dict:
        """The point as a dict of the :data:`COLUMNS` (what tables, CSV and JSON hold)."""
        row = asdict(self)
        row.pop("columns")
        return row


COLUMNS = tuple(f.name for f in fields(SweepPoint) if f.name != "columns")
"""The columns of a sweep table, in order."""


def _names(value, what: str) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(x).strip() for x in items if str(x).strip()]
    if not items:
        raise WfvizError(f"Give at least one {what}.")
    return items


def _check_rates(rates) -> list[float]:
    out = []
    for r in _names(rates, "rate"):
        try:
            v = float(r)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and v > 0):
            raise WfvizError(f"Rates must be positive numbers of bits, got {r!r}.")
        out.append(v)
    return out


def check_sweep_args(methods, rotations, rates, rate_metric, rows):
    """Validate a sweep's grid; returns ``(methods, rotations, rates)`` as lists.

    Examples
    --------
    >>> check_sweep_args("gptq,watersic", "identity", "2,3", "column_entropy", 256)[2]
    [2.0, 3.0]
    """
    methods, rotations, rates = _names(methods, "method"), _names(rotations, "rotation"), \
        _check_rates(rates)
    for m in methods:
        get_method(m)
        if m in _ENTROPY_METHODS and rate_metric == "log_cardinality":
            raise WfvizError(f"{m} has unbounded codes, so its rate cannot be log_cardinality; "
                             f"use an entropy or a coded size.")
        if m not in _ENTROPY_METHODS and any(r != int(r) for r in rates):
            raise WfvizError(f"{m} uses a grid of 2^b levels, so its rates must be whole bits; "
                             f"drop it or use whole rates.")
    for r in rotations:
        if r not in ROTATIONS:
            raise WfvizError(f"Unknown rotation {r!r}; use one of {', '.join(ROTATIONS)}.")
    if rate_metric not in RATE_METRICS:
        raise WfvizError(f"Unknown rate metric {rate_metric!r}; use one of "
                         f"{', '.join(RATE_METRICS)}.")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise WfvizError(f"rows must be a positive integer, got {rows!r}.")
    return methods, rotations, rates


def _eigenvalues(sigma, S: torch.Tensor) -> np.ndarray:
    if hasattr(sigma, "eigenvalues"):
        return np.asarray(sigma.eigenvalues, dtype=np.float64)
    return np.clip(torch.linalg.eigvalsh(S).cpu().numpy()[::-1], 0.0, None)


def _weights(W, rows: int, n: int, seed: int) -> torch.Tensor:
    if W is None:
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(rows, n, generator=g, dtype=torch.float64)
    return check_weights(as_float64(W, "W"), n)


def _predicted(method: str, d: np.ndarray | None) -> tuple[float, str]:
    if method == "watersic":
        return WATERSIC_GAP_BITS, "high-rate theory"
    gptq = WATERSIC_GAP_BITS + gptq_gap_bits(d) if d is not None else math.nan
    if method == "gptq-ec":
        return gptq, "high-rate theory"
    return gptq, "gptq-ec formula (reference only)"


def _gptq_d(Sr: torch.Tensor, prep: GPTQPrepared | None,
            damping: float = GPTQECConfig().damping) -> np.ndarray | None:
    """GPTQ's ``d_j = Var(X_j | X_{j+1..})`` of the damped Σ.

    GPTQ decides the columns first to last with the upper Cholesky factor ``U`` of
    ``H⁻¹ = (2Σ)⁻¹``, so ``d_j = 1/(2 U_jj²) = R_jj²/2`` with ``H = R Rᵀ`` (``R = U⁻¹``
    upper): the Cholesky diagonal of Σ in *reversed* order, with the same product as
    ``Var(X_j | X_{<j})`` but a different AM. Taken from GPTQ-EC's prepared factor when there
    is one; otherwise one Cholesky of the reversed Σ, with the damping added in place to keep
    the n×n copies to two.
    """
    if prep is not None:
        return (0.5 * prep.r_diag**2).cpu().numpy()
    H = Sr.flip(0, 1)
    H.diagonal().add_(damping * float(torch.diagonal(H).mean()))
    L, info = cholesky_ex(H)
    del H
    if info != 0:
        return None
    return (torch.diagonal(L) ** 2).flip(0).cpu().numpy()


@dataclass(eq=False)
class _Basis:
    """One rotation's working basis, with what every method's points share."""

    label: str
    wb: WorkingBasis
    energy: float
    d: np.ndarray | None
    ec_prep: GPTQPrepared | None  # GPTQ-EC's factor, dropped once GPTQ-EC has run
    ec_prep_s: float
    entropy_powers: np.ndarray | None = None  # of the columns of given (real) weights


@dataclass(frozen=True)
class _Sweep:
    """What every group of a sweep shares."""

    W: torch.Tensor
    methods: list
    rotations: list
    rates: list
    metric: str
    seed: int
    lam: np.ndarray
    variance: float
    cancel: object
    keep_columns: bool
    given_weights: bool
    damping: float | None = None
    notice: object = None
    energies: dict = field(default_factory=dict)  # device type → tr(WΣWᵀ)/(a·n), any basis

    def config(self, method: str):
        """``method``'s config, with the sweep's damping for the entropy-coded methods."""
        if self.damping is not None and method in _ENTROPY_METHODS:
            return make_config(method, damping=self.damping)
        return make_config(method)


def _basis(ctx: _Sweep, W, S, rot_name, label) -> _Basis:
    wb = working_basis(W, S, rot_name, seed=ctx.seed)
    start = time.perf_counter()
    ec_config = ctx.config("gptq-ec")
    ec_prep = prepare_gptq_ec(wb.S, ec_config) if "gptq-ec" in ctx.methods else None
    ec_prep_s = time.perf_counter() - start
    powers = (column_entropy_powers(wb.W.cpu().numpy()) if ctx.given_weights else None)
    # the layer's energy is the same in every basis (Q is orthogonal): measure it once
    if W.device.type not in ctx.energies:
        ctx.energies[W.device.type] = wb.energy()
    return _Basis(label, wb, ctx.energies[W.device.type],
                  _gptq_d(wb.S, ec_prep, ec_config.damping), ec_prep, ec_prep_s, powers)


def _real_weight_prediction(ctx: _Sweep, method: str, b: _Basis, payload: float) -> float:
    """Predicted high-rate gap (bits) of given, non-Gaussian weights at the payload rate:
    each column's entropy power enters next to ``d_j`` (``docs/theory.md`` §7), measured
    against the IT limit of Gaussian rows of the same variance."""
    m, n = b.wb.m, b.wb.n
    rate_live = payload * n / m
    if method == "watersic":
        d = cholesky_diag(b.wb.S.cpu().numpy(), damping=ctx.config("watersic").damping)
        D = watersic_distortion_from_entropy(b.entropy_powers, d, rate_live)
    elif method in ("gptq-ec", "gptq", "rtn") and b.d is not None:
        D = gptq_ec_distortion_from_entropy(b.entropy_powers, b.d, rate_live)
    else:
        return math.nan
    it = float(it_distortion(ctx.lam, payload, variance=ctx.variance))
    return 0.5 * math.log2(float(D) * m / n / it) if it > 0 and D > 0 else math.nan


def _method_points(ctx: _Sweep, spec, bases: list[_Basis], progress) -> list[list[tuple]]:
    """(target, MethodOutput, seconds) of one method for every rate in every basis.

    Methods with a batched search get all bases in one call; the shared work (factor,
    search, GPTQ-EC's factor made with the basis) is shared out equally over the points.
    All bases have the same live features, so one list of method rates serves them all.
    """
    cfg = ctx.config(spec.name)
    rates = [bases[0].wb.method_rate(r, spec.integer_rates) for r in ctx.rates]
    if spec.quantize_many is None:
        return [list(_single_points(ctx, spec, cfg, b, rates)) for b in bases]
    start = time.perf_counter()
    preps = [b.ec_prep if spec.name == "gptq-ec" else
             spec.prepare(b.wb.S, cfg) if spec.prepare is not None else None for b in bases]
    outs = spec.quantize_many([(b.wb.W, b.wb.S, p) for b, p in zip(bases, preps, strict=True)],
                              rates, cfg, rate_metric=ctx.metric, cancel=ctx.cancel,
                              progress=progress)
    del preps
    each = (time.perf_counter() - start) / (len(bases) * len(rates))
    extra = [b.ec_prep_s / len(rates) if spec.name == "gptq-ec" else 0.0 for b in bases]
    return [[(t, o, each + x) for t, o in zip(ctx.rates, row, strict=True)]
            for row, x in zip(outs, extra, strict=True)]


def _single_points(ctx: _Sweep, spec, cfg, b: _Basis, rates):
    start = time.perf_counter()
    prep = spec.prepare(b.wb.S, cfg) if spec.prepare is not None else None
    prep_s = time.perf_counter() - start
    for target, r in zip(ctx.rates, rates, strict=True):
        start = time.perf_counter()
        rate = int(r) if spec.integer_rates else r
        out = spec.quantize(b.wb.W, b.wb.S, rate, cfg, rate_metric=ctx.metric,
                            cancel=ctx.cancel, prepared=prep)
        yield target, out, prep_s / len(rates) + time.perf_counter() - start


def _kept(method: str, out) -> dict:
    """What ``keep_columns`` stores of one point (see :class:`SweepPoint`)."""
    if out.rate_metric in ("column_entropy", "pooled_entropy"):  # already measured per column
        side = out.side_info_bits / out.codes.numel()
        entropy = np.asarray(out.column_rates, dtype=np.float64) - side
    else:
        entropy = column_entropy_bits(out.codes)
    kept = {"column_entropy": entropy}
    if method == "watersic":
        alpha = out.scales["alpha"].cpu().numpy()
        live = alpha > 0
        d = np.full(alpha.shape, out.info["damping_abs"])
        d[live] = (out.info["c"] / alpha[live]) ** 2
        kept["d"] = d
    return kept


def _gap(distortion: float, it: float) -> float:
    return 0.5 * math.log2(distortion / it) if distortion > 0 and it > 0 else math.nan


def _point(ctx: _Sweep, method, b: _Basis, target, out, distortion, seconds) -> SweepPoint:
    rate = b.wb.layer_rate(float(out.rate))
    a, m = out.codes.shape
    side = ((out.side_info_bits + b.wb.dead_side_bits) / (a * b.wb.n)
            + model_side_bits(out.rate_metric, a, m) * m / b.wb.n)
    it = float(it_distortion(ctx.lam, rate, variance=ctx.variance))
    payload_it = float(it_distortion(ctx.lam, max(rate - side, 0.0), variance=ctx.variance))
    predicted, kind = _predicted(method, b.d)
    if b.entropy_powers is not None:
        predicted, kind = _real_weight_prediction(ctx, method, b, rate - side), \
            "high-rate theory, these weights' entropy powers"
    return SweepPoint(method=method, rotation=b.label, target_rate=float(target), rate=rate,
                      rate_metric=out.rate_metric, distortion=distortion,
                      relative_distortion=distortion / b.energy, it_limit=it,
                      gap_bits=_gap(distortion, it), side_bits=side,
                      payload_gap_bits=_gap(distortion, payload_it),
                      predicted_gap_bits=predicted, prediction=kind, time_s=seconds,
                      columns=_kept(method, out) if ctx.keep_columns else None)


def _poll(ctx: _Sweep, progress, fraction: float, message: str) -> None:
    """Between the long steps that the methods' own loops do not cover (preparing a basis,
    measuring a point's distortion): report, and stop if cancelled."""
    if ctx.cancel is not None and ctx.cancel():
        raise Cancelled("The sweep was cancelled.")
    if progress is not None:
        progress(fraction, message)


def _group_points(ctx: _Sweep, group, device, done: set, progress, step: list) -> Iterator:
    """``((rotations, method), points)`` of every method on one group of rotations."""
    W = ctx.W.to(device)
    prepared = []
    for (S, rot_name), label in group:
        _poll(ctx, progress, step[0] / step[1], f"preparing the {label} basis")
        prepared.append(_basis(ctx, W, S.to(device), rot_name, label))
    for m in ctx.methods:
        key = (tuple(b.label for b in prepared), m)
        if key in done:
            continue
        shared = _share(progress, step[0], len(prepared), step[1])
        last = [step[0] / step[1]]  # the method's last report: the measuring goes on from it

        def inner(f, msg, shared=shared, last=last):
            shared(f, msg)
            last[0] = max(last[0], (step[0] + min(f, 1.0) * len(prepared)) / step[1])

        per_basis = _method_points(ctx, get_method(m), prepared,
                                   None if progress is None else inner)
        if m == "gptq-ec":
            for b in prepared:
                b.ec_prep = None  # before the next method allocates its own factors
        points = []
        count = sum(len(pts) for pts in per_basis)
        for b, pts in zip(prepared, per_basis, strict=True):
            note = damping_notice(m, ctx.config(m), pts[0][1].info, f" on {b.label}")
            if note is not None:
                notify(note, ctx.notice)
            for t, out, secs in pts:  # one at a time: seconds each for a large a × n
                end = (step[0] + len(prepared)) / step[1]
                _poll(ctx, progress, last[0] + (end - last[0]) * len(points) / count,
                      f"{m} on {b.label}: measuring the distortion of point "
                      f"{len(points) + 1} of {count}")
                (dist,) = b.wb.distortions([out.W_hat])
                points.append(_point(ctx, m, b, t, out, dist, secs))
        del per_basis  # its outputs hold Ŵ and the codes of every point
        step[0] += len(prepared)
        if progress is not None:
            progress(step[0] / step[1], f"{m} on {', '.join(b.label for b in prepared)} done")
        yield key, points


BATCH_MAX_N = 2048
"""Up to this n a sweep prepares every rotation at once and runs each entropy-coded method
over all of them in batched column loops, which are bound by per-operation overhead there;
above it, one rotation at a time, so that only one rotation's n×n arrays are held."""


def _share(progress, done: int, size: int, total: int):
    """A method's own progress (0..1 over ``size`` of the ``total`` steps) as the sweep's."""
    if progress is None:
        return None
    return lambda f, msg: progress((done + min(f, 1.0) * size) / total, msg)


def iter_sweep(sigma, *, methods, rotations, rates, rows: int = 256, seed: int = 0,
               device: str = "auto", rate_metric: str = "column_entropy", W=None,
               progress=None, cancel=None, notice=None, keep_columns: bool = False,
               damping: float | None = None) -> Iterator[SweepPoint]:
    """Quantize one weight matrix with every method × rotation × rate, point by point.

    Parameters
    ----------
    sigma : ndarray, torch.Tensor or Covariance, shape (n, n)
        Σ_X; an eigenvalues-only Covariance allows the ``haar`` and ``eigenbasis`` rotations.
    methods, rotations : sequence of str or comma-separated str
        Names from :data:`wfviz.quantizers.METHODS` and :data:`wfviz.rotations.ROTATIONS`.
    rates : sequence of float or comma-separated str
        Target rates (grid bits for ``rtn``/``gptq``, measured bits otherwise).
    rows : int
        Rows of the synthetic i.i.d. ``N(0, 1)`` weights (ignored when ``W`` is given).
    seed : int
        Seed of the synthetic weights and of random rotations.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``; a GPU out of memory falls back to CPU
        (the methods already finished are not run again).
    rate_metric : str
        How every rate is counted (one metric per table).
    W : ndarray or torch.Tensor, optional
        Weights to use instead of synthetic ones, shape ``(a, n)``.
    progress : callable, optional
        ``progress(fraction, message)`` during and after each (rotation, method).
    cancel : callable, optional
        ``cancel()`` returning True raises :class:`~wfviz.errors.Cancelled`; the points
        yielded before stay valid.
    notice : callable, optional
        Also receives the one-line notices, which are issued as
        :class:`~wfviz.errors.WfvizWarning` in any case.
    keep_columns : bool
        Attach the per-column data of every point (:attr:`SweepPoint.columns`).
    damping : float, optional
        Relative damping of the entropy-coded methods (GPTQ-EC, WaterSIC) instead of their
        configs' default, also in their predictions; GPTQ and RTN keep theirs.

    Yields
    ------
    SweepPoint
        In groups, as each method finishes on a group of rotations (all rotations at once up
        to ``n = BATCH_MAX_N``, one by one above).

    Examples
    --------
    >>> pts = list(iter_sweep(np.diag([4.0, 2.0, 1.0, 0.5]), methods="gptq-ec,watersic",
    ...                       rotations="identity", rates=[3], rows=512))
    >>> [p.method for p in pts], all(abs(p.rate - 3) <= 0.01 for p in pts)
    (['gptq-ec', 'watersic'], True)
    """
    methods, rotations, rates = check_sweep_args(methods, rotations, rates, rate_metric, rows)
    bases = [sigma_and_rotation_basis(sigma, r) for r in rotations]
    S = bases[0][0]
    W64 = _weights(W, rows, S.shape[0], seed)
    ctx = _Sweep(W64, methods, rotations, rates, rate_metric, seed, _eigenvalues(sigma, S),
                 float((W64**2).mean()), cancel, keep_columns, W is not None, damping, notice)
    for m in methods:
        ctx.config(m)  # a bad damping fails here, before any work
    dev = float64_device(resolve_device(device), notice)
    todo = list(zip(bases, rotations, strict=True))
    groups = [todo] if S.shape[0] <= BATCH_MAX_N else [[item] for item in todo]
    step = [0, len(rotations) * len(methods)]

    def run(d, done):
        for group in groups:
            yield from _group_points(ctx, group, d, done, progress, step)

    for _, points in iter_with_oom_fallback(run, dev, notice):
        yield from points


def sweep(sigma, **kwargs) -> list[SweepPoint]:
    """All points of :func:`iter_sweep` (same parameters), ordered by rotation, then method.

    A cancelled sweep raises :class:`~wfviz.errors.Cancelled` with the finished points as its
    ``points`` attribute.

    Examples
    --------
    >>> pts = sweep(np.diag([4.0, 2.0, 1.0, 0.5]), methods="gptq-ec,watersic",
    ...             rotations="identity", rates=[3], rows=512)
    >>> [p.method for p in pts], all(abs(p.rate - 3) <= 0.01 for p in pts)
    (['gptq-ec', 'watersic'], True)
    """
    points: list[SweepPoint] = []
    try:
        points.extend(iter_sweep(sigma, **kwargs))
    except Cancelled as exc:
        exc.points = points
        raise
    return order_points(points, kwargs["methods"], kwargs["rotations"])


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will run, checked before it runs (:func:`plan_sweep`).

    Attributes
    ----------
    rotations : tuple of str
    method_rates : dict
        Method → the target rates it will run, in the order the methods were asked for.
    notes : tuple of str
        One sentence each about what differs from the request (the grid methods' rounding).
    errors : tuple of str
        One sentence each about what stops the sweep; empty when it can run.
    """

    rotations: tuple
    method_rates: dict
    notes: tuple = ()
    errors: tuple = ()

    @property
    def groups(self) -> list[tuple[list[str], list[float]]]:
        """``(methods, rates)`` of the sweeps to run: methods that share their rates together."""
        out: dict = {}
        for method, rates in self.method_rates.items():
            out.setdefault(tuple(rates), []).append(method)
        return [(methods, list(rates)) for rates, methods in out.items()]

    @property
    def total(self) -> int:
        """Points the sweep will produce."""
        return len(self.rotations) * sum(len(r) for r in self.method_rates.values())


def whole_bits(rates) -> list[float]:
    """``rates`` rounded to whole bits (at least 1), without repeats, in increasing order: what
    the fixed-grid methods (``gptq``, ``rtn``) run.

    Examples
    --------
    >>> whole_bits([1.0, 1.8, 2.6, 3.4, 4.2, 5.0])
    [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    return sorted({float(max(1, round(float(r)))) for r in rates})


def _grid_note(grid: list[str], run: list[float]) -> str:
    fmt = ", ".join(f"{r:g}" for r in run)
    uses, runs = (("uses a grid", "it runs") if len(grid) == 1 else
                  ("use grids", "they run"))
    return (f"{' and '.join(grid)} {uses} of 2^b levels, so {runs} whole bits only: {fmt} "
            "(the other rates rounded to the nearest whole bit).")


def plan_sweep(methods, rotations, rates, *, rate_metric: str, rows: int,
               n: int | None = None, live: int | None = None) -> SweepPlan:
    """Check a sweep before running it, and say which rates each method will run.

    Unlike :func:`check_sweep_args` it does not raise: every problem becomes one sentence of
    ``errors``, so that a form can show them all at once. The fixed-grid methods (``gptq``,
    ``rtn``) get the rates rounded to whole bits (:func:`whole_bits`), with a note. Given the
    dimension ``n`` of Σ and its ``live`` (not dead) features, the entropy-coded methods' top
    rate is checked against what ``rate_metric`` can read from ``rows`` rows
    (:func:`wfviz.quantizers.search.check_target_rate`, side information left out, so a
    rate that passes here can still be refused when the sweep runs).

    Examples
    --------
    >>> plan = plan_sweep(["watersic", "gptq"], ["identity"], [2.5, 3.0],
    ...                   rate_metric="parametric_coded", rows=256)
    >>> plan.method_rates, plan.total, plan.errors
    ({'watersic': [2.5, 3.0], 'gptq': [2.0, 3.0]}, 4, ())
    >>> plan_sweep([], ["identity"], [3], rate_metric="column_entropy", rows=256).errors
    ('Pick at least one method.',)
    """
    from .quantizers.search import check_target_rate

    errors: list[str] = []
    methods, rotations = list(methods), list(rotations)
    if not methods:
        errors.append("Pick at least one method.")
    if not rotations:
        errors.append("Pick at least one rotation.")
    try:
        asked = _check_rates(rates)
    except WfvizError as exc:
        return SweepPlan(tuple(rotations), {}, (), (*errors, str(exc)))
    grid = [m for m in methods if m not in _ENTROPY_METHODS]
    whole = whole_bits(asked)
    method_rates = {m: (whole if m in grid else asked) for m in methods}
    notes = (_grid_note(grid, whole),) if grid and whole != asked else ()
    for group, group_rates in SweepPlan(tuple(rotations), method_rates).groups:
        try:
            check_sweep_args(group, rotations or ["identity"], group_rates, rate_metric, rows)
        except WfvizError as exc:
            errors.append(str(exc))
    if not errors and n is not None and live:
        for m in (m for m in methods if m in _ENTROPY_METHODS):
            try:
                check_target_rate(max(asked), a=rows, n=n, m=live, side_bits=0.0,
                                  rate_metric=rate_metric, method=m)
            except WfvizError as exc:
                errors.append(str(exc))
                break
    return SweepPlan(tuple(rotations), method_rates, notes, tuple(errors))


def iter_plan(sigma, plan: SweepPlan, *, progress=None, **kwargs) -> Iterator[SweepPoint]:
    """:func:`iter_sweep` over every group of ``plan`` (same weights, seed and rotations), with
    one ``progress`` over all of them.

    Raises
    ------
    WfvizError
        The plan's first error, if it has one.

    Examples
    --------
    >>> plan = plan_sweep(["watersic", "gptq"], ["identity"], [2.5, 3.0],
    ...                   rate_metric="column_entropy", rows=256)
    >>> [(p.method, p.target_rate) for p in iter_plan(np.eye(4), plan, rows=256,
    ...                                               rate_metric="column_entropy")]
    [('watersic', 2.5), ('watersic', 3.0), ('gptq', 2.0), ('gptq', 3.0)]
    """
    if plan.errors:
        raise WfvizError(plan.errors[0])
    done, total = 0, plan.total
    for methods, rates in plan.groups:
        size = len(methods) * len(rates) * len(plan.rotations)
        inner = (None if progress is None else
                 lambda f, msg, d=done, s=size: progress((d + min(f, 1.0) * s) / total, msg))
        yield from iter_sweep(sigma, methods=methods, rotations=plan.rotations, rates=rates,
                              progress=inner, **kwargs)
        done += size


def order_points(points: list[SweepPoint], methods, rotations) -> list[SweepPoint]:
    """``points`` sorted by rotation, then method, in the order the sweep was asked for."""
    methods, rotations = _names(methods, "method"), _names(rotations, "rotation")
    return sorted(points, key=lambda p: (rotations.index(p.rotation), methods.index(p.method)))


def gap_table(points, gap: str = "gap_bits") -> list[dict]:
    """Measured gap to the IT limit in bits: one row per method · rotation, one column per
    target rate (``"R = 3"``), and the high-rate prediction (``"high-rate theory"``).

    ``gap="payload_gap_bits"`` gives the gap at the payload rate, which is what the high-rate
    prediction is about; the default is the gap at the full rate.

    Examples
    --------
    >>> pts = sweep(np.diag([4.0, 2.0, 1.0, 0.5]), methods="watersic",
    ...             rotations="identity,haar", rates=[3, 4], rows=512)
    >>> [sorted(row) for row in gap_table(pts)][0]
    ['R = 3', 'R = 4', 'high-rate theory', 'method · rotation']
    """
    rows: dict = {}
    for p in _as_rows(points):
        key = f"{p['method']} · {p['rotation']}"
        row = rows.setdefault(key, {"method · rotation": key})
        row[f"R = {p['target_rate']:g}"] = p[gap]
        row.setdefault("high-rate theory", p["predicted_gap_bits"])
    for row in rows.values():  # the prediction last, after every rate
        row["high-rate theory"] = row.pop("high-rate theory")
    return list(rows.values())


def _as_rows(points) -> list[dict]:
    return [p.as_row() if isinstance(p, SweepPoint) else p for p in points]


def table_to_csv(rows, *, header: dict | None = None) -> str:
    """The sweep table (points or row dicts) as CSV text with a header line.

    ``header`` adds ``# key: value`` comment lines first (the source, rows, seed and rate
    metric of the run), so that a saved table says what it measured.

    Examples
    --------
    >>> table_to_csv([{"method": "gptq", "rate": 4.0}]).splitlines()
    ['method,rate', 'gptq,4.0']
    >>> table_to_csv([{"rate": 4.0}], header={"source": "x"}).splitlines()
    ['# source: x', 'rate', '4.0']
    """
    rows = _as_rows(rows)
    if not rows:
        return ""
    buf = io.StringIO()
    for key, value in (header or {}).items():
        buf.write(f"# {key}: {value}\n")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


def table_to_text(rows, columns=COLUMNS) -> str:
    """The sweep table (points or row dicts) as aligned plain text (for the terminal).

    Examples
    --------
    >>> print(table_to_text([{"method": "gptq", "rate": 4.0}], ("method", "rate")))
    method  rate
    gptq    4.0000
    """
    rows = _as_rows(rows)
    cells = [[str(c) for c in columns]] + [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)
