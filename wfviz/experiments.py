"""Distortion-rate sweeps: methods × rotations × rates on one Σ_X, as a tidy table.

The weights are i.i.d. ``N(0, 1)`` rows (``rows``, ``seed``) unless a ``W`` is given. Each row
of the table compares the measured distortion with the information-theoretic limit at the
*measured* rate: ``it_limit`` is the exact reverse-waterfilling distortion of the eigenvalues of
Σ with the per-entry variance ``σ² = mean(W²)`` (the theory's model is rows i.i.d.
``N(0, σ² I)``), and ``gap_bits = ½ log2(distortion / it_limit)``.

``predicted_gap_bits`` is the high-rate theory: WaterSIC ``½ log2(2πe/12) ≈ 0.2546`` in every
basis; entropy-coded GPTQ that plus ``½ log2(AM(d)/GM(d))`` with ``d_j = Var(X_j | X_{j+1..})``
in the rotated basis, i.e. ``1/U_jj²`` of the GPTQ factor (damped as GPTQ-EC's default, 1e-4).
That is the Cholesky diagonal of Σ in *reversed* column order, because GPTQ decides the columns
first to last; its geometric mean is the same as in natural order but its AM is not. For GPTQ
and RTN, whose rate is a grid's, the same GPTQ-EC formula is given as a reference only (column
``prediction``).

Work shared across rates: the rotation and the method's Σ-only preparation (Cholesky) are done
once per rotation, and the entropy-coded methods (GPTQ-EC, WaterSIC) search all rates
together in stacked passes.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .device import float64_device, resolve_device, run_with_oom_fallback
from .errors import WfvizError, all_finite
from .quantize import (
    _as_tensor,
    damping_notice,
    make_config,
    sigma_and_rotation_basis,
    weighted_error,
)
from .quantizers import get_method
from .quantizers.base import cholesky_ex
from .quantizers.gptq import GPTQPrepared
from .quantizers.gptq_ec import GPTQECConfig, prepare_gptq_ec
from .rates import column_entropy_bits
from .theory import WATERSIC_GAP_BITS, gptq_gap_bits, it_distortion

COLUMNS = ("method", "rotation", "target_rate", "rate", "rate_metric", "distortion",
           "relative_distortion", "it_limit", "gap_bits", "predicted_gap_bits", "prediction",
           "time_s")
"""The columns of a sweep table, in order."""

_ENTROPY_METHODS = ("gptq-ec", "watersic")


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


def _check_args(methods, rotations, rates, rate_metric, rows):
    from .rates import RATE_METRICS
    from .rotations import ROTATIONS

    methods, rotations, rates = _names(methods, "method"), _names(rotations, "rotation"), \
        _check_rates(rates)
    for m in methods:
        get_method(m)
        if m in _ENTROPY_METHODS and rate_metric == "log_cardinality":
            raise WfvizError(f"{m} has unbounded codes, so its rate cannot be log_cardinality; "
                             f"use column_entropy, pooled_entropy or coded_bits.")
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
    Wt = _as_tensor(W, "W")
    if Wt.ndim != 2 or Wt.shape[1] != n or Wt.shape[0] == 0:
        raise WfvizError(f"W must have shape (a, {n}) to match Σ, got {tuple(Wt.shape)}.")
    if not all_finite(Wt):
        raise WfvizError("W must be finite; remove NaN and infinite entries first.")
    return Wt


def _predicted(method: str, d: np.ndarray | None) -> tuple[float, str]:
    if method == "watersic":
        return WATERSIC_GAP_BITS, "high-rate theory"
    gptq = WATERSIC_GAP_BITS + gptq_gap_bits(d) if d is not None else math.nan
    if method == "gptq-ec":
        return gptq, "high-rate theory"
    return gptq, "gptq-ec formula (reference only)"


def _gptq_d(Sr: torch.Tensor, prep: GPTQPrepared | None) -> np.ndarray | None:
    """GPTQ's ``d_j = Var(X_j | X_{j+1..})`` of the damped Σ.

    GPTQ decides the columns first to last with the upper Cholesky factor ``U`` of
    ``H⁻¹ = (2Σ)⁻¹``, so ``d_j = 1/(2 U_jj²) = R_jj²/2`` with ``H = R Rᵀ`` (``R = U⁻¹``
    upper): the Cholesky diagonal of Σ in *reversed* order,
    with the same product as ``Var(X_j | X_{<j})`` but a different AM. Taken from GPTQ-EC's
    prepared factor when there is one; otherwise one Cholesky of the reversed Σ, with the
    damping added in place to keep the n×n copies to two.
    """
    if prep is not None:
        return (0.5 * prep.r_diag**2).cpu().numpy()
    H = Sr.flip(0, 1)
    H.diagonal().add_(GPTQECConfig().percdamp * float(torch.diagonal(H).mean()))
    L, info = cholesky_ex(H)
    del H
    if info != 0:
        return None
    return (torch.diagonal(L) ** 2).flip(0).cpu().numpy()


@dataclass
class _Basis:
    """One rotation's weights and Σ, with what every method's rows share."""

    label: str
    Wr: torch.Tensor
    Sr: torch.Tensor
    energy: float
    d: np.ndarray | None
    ec_prep: GPTQPrepared | None  # GPTQ-EC's factor, dropped once GPTQ-EC has run
    ec_prep_s: float


def _basis(W, S, rot_name, label, seed, methods) -> _Basis:
    from .rotations import get_rotation

    rot = get_rotation(rot_name, S.shape[0], seed=seed, sigma=S)
    Wr, Sr = rot.apply_layer(W, S)
    del rot  # a dense Q is n×n: free it before the factorizations
    start = time.perf_counter()
    ec_prep = prepare_gptq_ec(Sr) if "gptq-ec" in methods else None
    ec_prep_s = time.perf_counter() - start
    return _Basis(label, Wr, Sr, weighted_error(Wr, Sr), _gptq_d(Sr, ec_prep), ec_prep,
                  ec_prep_s)


def _method_points(spec, bases: list[_Basis], rates, metric, cancel,
                   progress=None) -> list[list[tuple]]:
    """(rate, MethodOutput, seconds) of one method for every rate in every basis.

    Methods with a batched search get all bases in one call; the shared work (factor,
    search, GPTQ-EC's factor made with the basis) is shared out equally over the points.
    """
    cfg = make_config(spec.name)
    if spec.quantize_many is None:
        return [list(_single_points(spec, cfg, b, rates, metric, cancel)) for b in bases]
    start = time.perf_counter()
    preps = [b.ec_prep if spec.name == "gptq-ec" else
             spec.prepare(b.Sr, cfg) if spec.prepare is not None else None for b in bases]
    outs = spec.quantize_many([(b.Wr, b.Sr, p) for b, p in zip(bases, preps, strict=True)],
                              rates, cfg, rate_metric=metric, cancel=cancel, progress=progress)
    del preps
    each = (time.perf_counter() - start) / (len(bases) * len(rates))
    extra = [b.ec_prep_s / len(rates) if spec.name == "gptq-ec" else 0.0 for b in bases]
    return [[(r, o, each + x) for r, o in zip(rates, row, strict=True)]
            for row, x in zip(outs, extra, strict=True)]


def _single_points(spec, cfg, b: _Basis, rates, metric, cancel):
    start = time.perf_counter()
    prep = spec.prepare(b.Sr, cfg) if spec.prepare is not None else None
    prep_s = time.perf_counter() - start
    for r in rates:
        start = time.perf_counter()
        rate = int(r) if spec.integer_rates else r
        out = spec.quantize(b.Wr, b.Sr, rate, cfg, rate_metric=metric, cancel=cancel,
                            prepared=prep)
        yield r, out, prep_s / len(rates) + time.perf_counter() - start


def _distortions(Wr: torch.Tensor, Sr: torch.Tensor, outs) -> list[float]:
    """``tr(E Σ Eᵀ)/(a n)`` of every output, float64, as one stacked matrix product."""
    E = torch.cat([Wr - o.W_hat.to(torch.float64) for o in outs])
    per_row = ((E @ Sr) * E).sum(dim=1).reshape(len(outs), -1)
    return (per_row.sum(dim=1) / Wr.numel()).tolist()


def _kept(method: str, out) -> dict:
    """What ``sweep(keep=...)`` stores of one point (see there)."""
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


def _row(method, rotation, target, out, distortion, energy, lam, variance, d, seconds) -> dict:
    it = float(it_distortion(lam, out.rate, variance=variance))
    predicted, kind = _predicted(method, d)
    return {"method": method, "rotation": rotation, "target_rate": float(target),
            "rate": float(out.rate), "rate_metric": out.rate_metric,
            "distortion": distortion, "relative_distortion": distortion / energy,
            "it_limit": it,
            "gap_bits": 0.5 * math.log2(distortion / it) if distortion > 0 and it > 0
            else math.nan,
            "predicted_gap_bits": predicted, "prediction": kind, "time_s": seconds}


def sweep(sigma, *, methods, rotations, rates, rows: int = 256, seed: int = 0,
          device: str = "auto", rate_metric: str = "column_entropy", W=None, progress=None,
          cancel=None, notice=None, table: list | None = None,
          keep: dict | None = None) -> list[dict]:
    """Quantize one weight matrix with every method × rotation × rate and tabulate the result.

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
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``; a GPU out of memory falls back to CPU.
    rate_metric : str
        How every rate is counted (one metric per table).
    W : ndarray or torch.Tensor, optional
        Weights to use instead of synthetic ones, shape ``(a, n)``.
    progress : callable, optional
        ``progress(fraction, message)`` after each (rotation, method).
    cancel : callable, optional
        ``cancel()`` returning True raises :class:`~wfviz.quantizers.base.Cancelled`.
    notice : callable, optional
        Receives one-line notices such as the GPU fallback.
    table : list, optional
        Every finished row is appended here as soon as its (rotation, method) is done, so a
        caller whose sweep is cancelled keeps the points it already has. The return value is
        this list (a new one when None).
    keep : dict, optional
        Receives, for every point, ``keep[(method, rotation, target_rate)]`` =
        ``{"column_entropy": ...}`` (the per-column empirical entropy of its codes, bits, no side
        information) and, for WaterSIC, ``"d"``: the ``d_j = L_jj²`` of the damped Σ it factored
        (from its steps, ``(c/α_j)²``; dead columns get the damping), for a per-column view
        without quantizing again.

    Returns
    -------
    list of dict
        One row per point with the keys of :data:`COLUMNS`; distortions are per entry and
        computed in float64 in the rotated basis (equal to the original basis: Q is
        orthogonal). ``time_s`` includes an equal share of the work shared across rates.

    Examples
    --------
    >>> rows = sweep(np.diag([4.0, 2.0, 1.0, 0.5]), methods="gptq-ec,watersic",
    ...              rotations="identity", rates=[3], rows=512)
    >>> [r["method"] for r in rows], all(abs(r["rate"] - 3) <= 0.01 for r in rows)
    (['gptq-ec', 'watersic'], True)
    """
    methods, rotations, rates = _check_args(methods, rotations, rates, rate_metric, rows)
    bases = [sigma_and_rotation_basis(sigma, r) for r in rotations]
    S = bases[0][0]
    n = S.shape[0]
    W64 = _weights(W, rows, n, seed)
    lam = _eigenvalues(sigma, S)
    variance = float((W64**2).mean())
    dev = float64_device(resolve_device(device), notice)

    table = [] if table is None else table

    def run(d: torch.device) -> list[dict]:
        del table[:]  # a CPU rerun after a GPU out-of-memory starts the table again
        _sweep_on(d, W64, bases, rotations, methods, rates, rate_metric, seed, lam, variance,
                  progress, cancel, notice, table, keep)
        return table

    return run_with_oom_fallback(run, dev, notice)


BATCH_MAX_N = 2048
"""Up to this n a sweep prepares every rotation at once and runs each entropy-coded method
over all of them in batched column loops, which are bound by per-operation overhead there;
above it, one rotation at a time, so that only one rotation's n×n arrays are held."""


def _sweep_on(dev, W64, bases, rotations, methods, rates, metric, seed, lam, variance,
              progress, cancel, notice, table, keep) -> None:
    total, done = len(rotations) * len(methods), 0
    W = W64.to(dev)
    n = W.shape[1]
    todo = list(zip(bases, rotations, strict=True))
    groups = [todo] if n <= BATCH_MAX_N else [[item] for item in todo]
    for group in groups:
        prepared = [_basis(W, S.to(dev), rot_name, label, seed, methods)
                    for (S, rot_name), label in group]
        for m in methods:
            inner = _share(progress, done, len(prepared), total)
            per_basis = _method_points(get_method(m), prepared, rates, metric, cancel, inner)
            if m == "gptq-ec":
                for b in prepared:
                    b.ec_prep = None  # before the next method allocates its own factors
            for b, points in zip(prepared, per_basis, strict=True):
                _add_rows(table, keep, m, b, points, lam, variance, notice)
            del per_basis  # its outputs hold Ŵ and the codes of every point
            done += len(prepared)
            if progress is not None:
                progress(done / total, f"{m} on {', '.join(b.label for b in prepared)} done")
        del prepared  # before the next rotation allocates its own n×n arrays
    order = {(m, r): (rotations.index(r), methods.index(m)) for m in methods for r in rotations}
    table.sort(key=lambda row: order[(row["method"], row["rotation"])])


def _share(progress, done: int, size: int, total: int):
    """A method's own progress (0..1 over ``size`` of the ``total`` steps) as the sweep's."""
    if progress is None:
        return None
    return lambda f, msg: progress((done + min(f, 1.0) * size) / total, msg)


def _add_rows(table, keep, m, b: _Basis, points, lam, variance, notice) -> None:
    note = damping_notice(m, make_config(m), points[0][1].info, f" on {b.label}")
    if note is not None and notice is not None:
        notice(note)
    dists = _distortions(b.Wr, b.Sr, [out for _, out, _ in points])
    for (target, out, secs), dist in zip(points, dists, strict=True):
        table.append(_row(m, b.label, target, out, dist, b.energy, lam, variance, b.d, secs))
        if keep is not None:
            keep[(m, b.label, float(target))] = _kept(m, out)


def table_to_csv(rows: list[dict]) -> str:
    """The sweep table as CSV text with a header line.

    Examples
    --------
    >>> table_to_csv([{"method": "gptq", "rate": 4.0}]).splitlines()
    ['method,rate', 'gptq,4.0']
    """
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


def table_to_text(rows: list[dict], columns=COLUMNS) -> str:
    """The sweep table as aligned plain text (for the terminal).

    Examples
    --------
    >>> print(table_to_text([{"method": "gptq", "rate": 4.0}], ("method", "rate")))
    method  rate
    gptq    4.0000
    """
    cells = [[str(c) for c in columns]] + [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)
