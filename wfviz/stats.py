"""Summary statistics of one Σ_X and the GPTQ-vs-WaterSIC gap it predicts in each basis.

The high-rate gap of entropy-coded GPTQ over WaterSIC is ``½ log2(AM(d)/GM(d))`` bits, where
``d = diag(L)²`` is the Cholesky diagonal of ``Q Σ_X Qᵀ`` for the rotation ``Q`` in use.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .covariance import Covariance
from .errors import WfvizError
from .rotations import ROTATIONS, get_rotation
from .theory import cholesky_diag, gptq_gap_bits, log2_am_gm
from .validation import count_dead, dead_mask

OUTLIER_RATIO = 3.0
"""A channel is called an outlier when E[x_j²] is at least this many times the median."""

HAAR_SEEDS = 5
"""Haar predictions are the mean (± standard deviation) over this many seeded rotations."""

_MAX_ESCALATED_DAMPING = 0.1


def _check_damping(damping) -> float:
    if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping >= 0):
        raise WfvizError(f"Damping must be a number >= 0 (e.g. 0.01), got {damping!r}.")
    return float(damping)


def _eigenbasis_d(eigenvalues: np.ndarray, damping: float) -> np.ndarray:
    # In the eigenbasis Σ is diagonal, so the Cholesky diagonal is the spectrum itself; damping
    # adds the same multiple of mean(diag Σ) = mean(λ) as cholesky_diag does.
    return eigenvalues + damping * float(np.mean(eigenvalues))


def haar_d(eigenvalues, *, seed: int = 0, damping: float = 0.0) -> np.ndarray:
    """Cholesky diagonal of ``Q Σ Qᵀ`` for a Haar-random ``Q``, from the eigenvalues alone.

    Write the seeded Gaussian matrix ``G = Q_g T`` (QR, ``T`` upper triangular) and take the
    Haar rotation ``Q = Q_gᵀ``. With ``Σ = U Λ Uᵀ``, ``Q U`` is Haar as well, so the rotated
    matrix is distributed as ``Q Λ Qᵀ = Rᵀ R`` where ``R = R1 T⁻¹`` and ``R1`` is the triangular
    factor of ``Λ^{1/2} G``. Hence ``d_j = (R1_jj / T_jj)²``: two triangular factorisations and
    no orthogonal matrix, rotation or matmul, about twice as fast as rotating and factorising.

    Parameters
    ----------
    eigenvalues : array_like, shape (n,)
        Eigenvalues of Σ_X (any order).
    seed : int
        Seed of the Gaussian matrix ``G``.
    damping : float
        Relative damping, as in :func:`wfviz.theory.cholesky_diag`.

    Returns
    -------
    ndarray, shape (n,)

    Examples
    --------
    >>> d = haar_d([4.0, 1.0, 0.25], seed=1)
    >>> round(float(np.prod(d)), 12)  # the determinant is kept
    1.0
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WfvizError(f"The seed must be an integer >= 0, got {seed!r}.")
    lam = np.asarray(eigenvalues, dtype=np.float64)
    lam = lam + _check_damping(damping) * float(np.mean(lam))
    g = torch.from_numpy(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    t_diag = torch.linalg.qr(g, mode="r").R.diagonal()
    r1_diag = torch.linalg.qr(torch.from_numpy(np.sqrt(lam))[:, None] * g, mode="r").R.diagonal()
    return ((r1_diag / t_diag) ** 2).numpy()


def rotated_d(cov: Covariance, rotation: str, *, seed: int = 0, damping: float = 0.0,
              order: str = "watersic") -> np.ndarray:
    """Cholesky diagonal ``d = diag(L)²`` of Σ_X after ``rotation``.

    Parameters
    ----------
    cov : Covariance
        Full matrix, or eigenvalues only (optionally with precomputed ``d_by_rotation``).
    rotation : str
        One of ``identity``, ``haar``, ``hadamard``, ``eigenbasis``, ``act_order``.
    seed : int
        Seed of the random rotations (haar, hadamard signs).
    damping : float
        Relative damping passed to :func:`wfviz.theory.cholesky_diag`.
    order : {"watersic", "gptq"}
        ``Var(X_j | X_<j)`` (WaterSIC's per-column variances) or ``Var(X_j | X_>j)`` (what
        GPTQ's first-to-last order sees, which its predicted gap needs); see
        :func:`wfviz.theory.cholesky_diag`.

    Returns
    -------
    ndarray, shape (n,)

    Notes
    -----
    ``eigenbasis`` (``d = λ``) and ``haar`` (see :func:`haar_d`; a Haar rotation of Σ_X has the
    distribution of a Haar rotation of ``diag(λ)``) are always computed from the eigenvalues, so
    full and eigenvalues-only sources agree. The Haar sample is seeded here and is not the matrix
    ``wfviz.rotations`` builds for the same seed; for large ``n`` the gap barely depends on the
    sample; it is a valid sample for either order (reversing the columns keeps the Haar law). A
    precomputed undamped ``cov.d_by_rotation[rotation]`` (or ``d_gptq_by_rotation``; bundles,
    Hadamard only for seed 0) is used when present; without it and without the full matrix,
    the basis-dependent rotations raise :class:`WfvizError`.

    Examples
    --------
    >>> cov = Covariance(eigenvalues=np.array([3.0, 1.0]), matrix=np.array([[2.0, 1], [1, 2]]))
    >>> np.round(rotated_d(cov, "identity"), 12).tolist()  # Var(X0), Var(X1 | X0)
    [2.0, 1.5]
    """
    if rotation not in ROTATIONS:
        raise WfvizError(f"Unknown rotation {rotation!r}; choose one of {', '.join(ROTATIONS)}.")
    damping = _check_damping(damping)
    table = cov.d_gptq_by_rotation if order == "gptq" else cov.d_by_rotation
    stored = rotation in table and (rotation != "hadamard" or seed == 0)
    if stored and cov.matrix is not None and count_dead(cov.diag):
        stored = False  # stored over every feature; the live block is what quantizers see
    if stored and not damping:
        # Bundles store d computed from the exact float64 Σ (Hadamard with seed 0): use it even
        # when the full matrix is there, since it is exact and saves an n³ factorisation.
        return np.asarray(table[rotation], dtype=np.float64)
    if cov.matrix is None and stored:
        raise WfvizError(f"{cov.label or 'This Σ_X'} has only an undamped precomputed d for "
                         f"{rotation}; damping needs the full matrix, so use damping 0.")
    if rotation == "eigenbasis":
        return _eigenbasis_d(live_spectrum(cov.eigenvalues), damping)
    if rotation == "haar":
        return haar_d(live_spectrum(cov.eigenvalues), seed=seed, damping=damping)
    if cov.matrix is None and rotation in cov.d_by_rotation:  # a bundle of format 1
        raise WfvizError(f"{cov.label or 'This Σ_X'} stores no {order}-order d for {rotation} "
                         f"and has no full matrix; regenerate its bundle with 'wfviz collect'.")
    if cov.matrix is None:
        raise WfvizError(f"The {rotation} rotation needs the full Σ_X matrix, but "
                         f"{cov.label or 'this source'} has only eigenvalues; load a full matrix.")
    S = live_block(cov.matrix)
    rotated = get_rotation(rotation, S.shape[0], seed=seed, sigma=S).apply_sigma(S)
    return cholesky_diag(rotated, damping=damping, order=order)


def live_block(matrix: np.ndarray) -> np.ndarray:
    """Σ without its dead features (:func:`wfviz.validation.dead_mask`), as every quantizer
    sees it before rotating (:func:`wfviz.basis.working_basis`).

    Examples
    --------
    >>> live_block(np.diag([2.0, 0.0, 1.0])).tolist()
    [[2.0, 0.0], [0.0, 1.0]]
    """
    live = ~dead_mask(np.diag(matrix))
    if not live.any():
        raise WfvizError("Every feature of Σ_X has zero variance; there is no live feature to "
                         "predict anything for.")
    return matrix if live.all() else matrix[np.ix_(live, live)]


def live_spectrum(eigenvalues) -> np.ndarray:
    """The eigenvalues without the null space (the dead-feature rule applied to ``diag(λ)``,
    the Σ of an eigenvalues-only source).

    Examples
    --------
    >>> live_spectrum([4.0, 1.0, 0.0]).tolist()
    [4.0, 1.0]
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    live = lam[~dead_mask(lam)]
    if not live.size:
        raise WfvizError("Every eigenvalue of Σ_X is zero; there is no live direction to predict "
                         "anything for.")
    return live


def predicted_gap(cov: Covariance, rotation: str, *, seed: int = 0, damping: float = 0.0,
                  notes: list | None = None) -> float:
    """GPTQ-EC's predicted high-rate gap over WaterSIC (bits) with GPTQ's ``d`` after
    ``rotation``, on the live features.

    A Cholesky that fails at ``damping`` (a rank-deficient Σ with no dead channel) is retried
    with ten times more, from 1e-6 up to 0.1 × mean diagonal, as the quantizers do; the damping
    used is added to ``notes``.

    Examples
    --------
    >>> cov = Covariance(eigenvalues=np.array([1.0, 1.0, 0.0]), matrix=np.diag([1.0, 0.0, 1.0]))
    >>> predicted_gap(cov, "hadamard")
    0.0
    """
    used = float(damping)
    while True:
        try:
            bits = gptq_gap_bits(rotated_d(cov, rotation, seed=seed, damping=used, order="gptq"))
            break
        except WfvizError:
            if cov.matrix is None or used >= _MAX_ESCALATED_DAMPING:
                raise
            used = min(max(10 * used, 1e-6), _MAX_ESCALATED_DAMPING)
    if used != damping and notes is not None:
        notes.append(f"gap_bits[{rotation}]: Σ is singular in this basis; factored with damping "
                     f"{used:g} × mean diagonal.")
    return bits


def haar_gap(cov: Covariance, *, seeds: int = HAAR_SEEDS, seed: int = 0,
             damping: float = 0.0) -> dict:
    """The Haar prediction as mean, standard deviation, min and max over ``seeds`` rotations
    (seeded ``seed``, ``seed + 1``, …).

    One random rotation is one draw: at small n or a spiky spectrum two seeds can differ by a
    tenth of a bit, so every Haar prediction in wfviz is this summary.

    Examples
    --------
    >>> h = haar_gap(Covariance(eigenvalues=np.array([4.0, 2.0, 1.0, 0.5])), seeds=3)
    >>> sorted(h), h["seeds"]
    (['max', 'mean', 'min', 'seeds', 'std'], 3)
    """
    lam = live_spectrum(cov.eigenvalues)
    gaps = np.array([gptq_gap_bits(haar_d(lam, seed=s, damping=damping))
                     for s in range(int(seed), int(seed) + int(seeds))])
    return {"mean": float(gaps.mean()), "std": float(gaps.std(ddof=1)) if gaps.size > 1 else 0.0,
            "min": float(gaps.min()), "max": float(gaps.max()), "seeds": int(seeds)}


def numerical_rank(eigenvalues) -> int:
    """Eigenvalues above ``n · ε · λ_max`` (float64 ε), the rank LAPACK would report.

    Examples
    --------
    >>> numerical_rank([2.0, 1.0, 1e-20, 0.0])
    2
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    top = float(lam.max()) if lam.size else 0.0
    return int(np.count_nonzero(lam > lam.size * np.finfo(np.float64).eps * top))


def effective_rank(eigenvalues) -> float:
    """Entropy effective rank ``exp(H(p))`` with ``p = λ / Σλ`` (Roy & Vetterli, 2007).

    It is ``n`` for a flat spectrum and 1 for a rank-one Σ_X (0 for an all-zero one).

    Examples
    --------
    >>> round(effective_rank([1.0, 1.0, 1.0, 0.0]), 12)
    3.0
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    total = lam.sum()
    if total <= 0:
        return 0.0
    p = lam[lam > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def _gap_bits(cov: Covariance, damping: float, seed: int, notes: list) -> tuple[dict, dict]:
    gaps, haar = {}, None
    for rotation in ROTATIONS:
        try:
            if rotation == "haar":
                haar = haar_gap(cov, seed=seed, damping=damping)
                gaps[rotation] = haar["mean"]
            else:
                gaps[rotation] = predicted_gap(cov, rotation, seed=seed, damping=damping,
                                               notes=notes)
        except WfvizError as exc:
            gaps[rotation] = None
            notes.append(f"gap_bits[{rotation}]: {exc}")
    return gaps, haar


def layer_stats(cov: Covariance, *, damping: float = 0.0, seed: int = 0) -> dict:
    """Spectrum summary and predicted GPTQ-vs-WaterSIC gap per rotation of one Σ_X.

    Parameters
    ----------
    cov : Covariance
        The layer's Σ_X.
    damping : float
        Relative damping for the Cholesky factorisations.
    seed : int
        Seed of the random rotations.

    Returns
    -------
    dict
        ``label``, ``source_id``, ``n``, ``trace``, ``lambda_max``, ``lambda_min``,
        ``condition_number`` (λ_max/λ_min, ``inf`` when λ_min = 0), ``effective_rank`` (entropy
        definition, see :func:`effective_rank`), ``dead_features`` (see
        :func:`wfviz.validation.dead_mask`, None when diag Σ is unknown),
        ``log2_gm_eigenvalue`` (mean log2 λ, ``-inf`` with a zero eigenvalue),
        ``am_gm_eigenvalue`` (AM(λ)/GM(λ)), ``gap_bits`` (rotation → ``½ log2(AM(d)/GM(d))``
        on the live features, GPTQ's order; Haar is the mean over :data:`HAAR_SEEDS` seeds,
        ``haar_gap`` its summary; None where it cannot be computed, with the reason in
        ``notes``), ``damping``, ``seed`` and ``notes``. Non-finite values stay floats here;
        :func:`json_safe` turns them into None for JSON.

    Examples
    --------
    >>> s = layer_stats(Covariance(eigenvalues=np.array([4.0, 1.0])))
    >>> s["condition_number"], round(s["gap_bits"]["eigenbasis"], 6), s["gap_bits"]["identity"]
    (4.0, 0.160964, None)
    """
    damping = _check_damping(damping)
    lam = cov.eigenvalues
    notes = list(cov.notes)
    lam_min = float(lam[-1])
    log2_am_gm_lam = log2_am_gm(lam)
    with np.errstate(divide="ignore"):
        log2_gm = float(np.mean(np.log2(lam)))
    rank = numerical_rank(lam)
    gaps, haar = _gap_bits(cov, damping, seed, notes)
    if rank < cov.n:
        notes.append(f"Σ_X has numerical rank {rank} < n = {cov.n} (fewer calibration tokens "
                     f"than features, or linearly dependent channels): {cov.n - rank} "
                     f"directions carry no energy, cost no bits at any rate, and make the "
                     f"Cholesky factor need damping.")
    return {
        "label": cov.label,
        "source_id": cov.source_id,
        "n": cov.n,
        "trace": float(np.trace(cov.matrix)) if cov.is_full else float(lam.sum()),
        "lambda_max": float(lam[0]),
        "lambda_min": lam_min,
        "condition_number": float(lam[0]) / lam_min if lam_min > 0 else math.inf,
        "effective_rank": effective_rank(lam),
        "numerical_rank": rank,
        "dead_features": count_dead(cov.diag),
        "log2_gm_eigenvalue": log2_gm,
        "am_gm_eigenvalue": 2.0**log2_am_gm_lam,
        "gap_bits": gaps,
        "haar_gap": haar,
        "damping": float(damping),
        "seed": int(seed),
        "notes": notes,
    }


def json_safe(obj):
    """Copy of ``obj`` with numpy scalars as Python numbers and ``inf``/``nan`` as None.

    Examples
    --------
    >>> json_safe({"a": float("inf"), "b": [np.float64(2.0)]})
    {'a': None, 'b': [2.0]}
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


_TABLE_ROWS = (
    ("n", "n"),
    ("trace", "trace(Σ)"),
    ("lambda_max", "λ_max"),
    ("lambda_min", "λ_min"),
    ("condition_number", "condition number"),
    ("effective_rank", "effective rank"),
    ("numerical_rank", "numerical rank"),
    ("dead_features", "dead features"),
    ("log2_gm_eigenvalue", "mean log2 λ"),
    ("am_gm_eigenvalue", "AM/GM of λ"),
)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def stats_table(stats: dict) -> str:
    """Human-readable, aligned text version of :func:`layer_stats` output (for the CLI).

    Examples
    --------
    >>> print(stats_table({"label": "x", "n": 2, "gap_bits": {"haar": 0.5}, "notes": []}))
    source  x
    n       2
    GPTQ-EC gap over WaterSIC at high rate, ½·log2(AM(d)/GM(d)) bits:
      haar  0.5
    """
    rows = [("source", stats.get("label") or stats.get("source_id", ""))]
    rows += [(title, _fmt(stats[key])) for key, title in _TABLE_ROWS if key in stats]
    gaps = [(f"  {rot}", _fmt(bits)) for rot, bits in stats.get("gap_bits", {}).items()]
    width = max(len(title) for title, _ in rows + gaps) + 2
    lines = [f"{title:<{width}}{value}" for title, value in rows]
    if gaps:
        lines.append("GPTQ-EC gap over WaterSIC at high rate, ½·log2(AM(d)/GM(d)) bits:")
        lines += [f"{title:<{width}}{value}" for title, value in gaps]
    lines += ["notes:"] + [f"  - {note}" for note in stats["notes"]] if stats.get("notes") else []
    return "\n".join(lines)


def top_channels(diag: np.ndarray, k: int = 5, *, min_ratio: float = 0.0) -> np.ndarray:
    """Channels of the ``k`` largest second moments diag Σ, largest first, keeping only those
    at least ``min_ratio`` × the median.

    Examples
    --------
    >>> top_channels(np.array([1.0, 9.0, 3.0]), 2).tolist()
    [1, 2]
    >>> top_channels(np.array([1.0, 9.0, 1.0, 1.0]), 2, min_ratio=3).tolist()
    [1]
    """
    diag = np.asarray(diag, dtype=np.float64)
    k = min(k, diag.size)
    top = np.argpartition(-diag, k - 1)[:k]
    top = top[np.argsort(-diag[top])]
    return top[diag[top] >= min_ratio * np.median(diag)]
