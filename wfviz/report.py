"""The paper's by-layer-type experiment on a bundle: how far GPTQ is from WaterSIC per basis.

For every layer the predicted high-rate gap of entropy-coded GPTQ over WaterSIC is
``½ log2(AM(d)/GM(d))`` bits, with ``d`` the Cholesky diagonal in the identity basis, after a
Haar rotation (computed from the eigenvalues; mean and spread over several seeds) and after the
Hadamard rotation. With ``measure=True`` the layers stored in full are also quantized at a high
rate and the measured gap ``½ log2(D_gptq-ec / D_watersic)`` is reported next to the prediction.
"""

from __future__ import annotations

import numpy as np

from .bundles import LAYER_INPUT_NAMES, LAYER_INPUTS, Bundle
from .covariance import Covariance
from .errors import WfvizError
from .stats import OUTLIER_RATIO, haar_gap, predicted_gap, top_channels
from .theory import log2_am_gm
from .validation import count_dead

CLAIM_BITS = 0.1
"""The paper's threshold: GPTQ after a random rotation within this many bits of WaterSIC."""

TABLE_BASES = ("identity", "hadamard", "act_order")
"""Bases of the per-layer table (Haar on request: it needs several random draws per layer)."""

PAPER_CLAIM = ("Llama-3-8B (paper): GPTQ with a random rotation is within 0.1 bit of WaterSIC, "
               "depending on layer type.")
PREDICTED = ("identity", "haar", "hadamard")
MEASURE_RATE = 6.0

MEASURE_ROWS = 2048
"""Rows of the Gaussian W of a measured gap. The per-column plug-in entropy reads low from few
codes, by a different amount for each method's column alphabets: at 6 bits and 256 rows the
measured gap came out 0.04-0.07 bit below the prediction on every full SmolLM2 layer; with
thousands of rows it agrees within about 0.02 bit (``tests/test_experiments.py``)."""


def layer_gaps(bundle: Bundle, block: int, name: str, *, haar_seeds: int = 5) -> dict:
    """Predicted gaps (bits) of one bundle layer in the identity, Haar and Hadamard bases.

    Examples
    --------
    >>> layer_gaps(load_bundle("smollm2-135m-wikitext2"), 15, "down")["haar"]  # doctest: +SKIP
    0.03...
    """
    cov = bundle.layer(block, name)
    haar = haar_gap(cov, seeds=haar_seeds)
    return {
        "block": block, "input": name, "n": cov.n, "has_full": cov.is_full,
        "identity": predicted_gap(cov, "identity"), "hadamard": predicted_gap(cov, "hadamard"),
        "haar": haar["mean"], "haar_std": haar["std"], "haar_min": haar["min"],
        "haar_max": haar["max"],
    }


def measured_gap(bundle: Bundle, block: int, name: str, *, rate: float = MEASURE_RATE,
                 rotation: str = "identity", rows: int = MEASURE_ROWS, seed: int = 0,
                 device: str = "auto") -> dict:
    """Measured gap of GPTQ-EC over WaterSIC on one full bundle layer at about ``rate`` bits.

    Both methods quantize the same Gaussian weights (``rows`` × n, seeded) with their rates
    counted as ``column_entropy``. The gap is ``½ log2(D_gptq-ec / D_watersic)`` corrected by the
    difference of the rates they reached (at high rate one bit more divides D by 4).

    Returns
    -------
    dict
        ``measured`` (bits), ``raw`` (the uncorrected distortion ratio in bits), and each
        method's ``rate_*`` and ``distortion_*``.
    """
    from .quantize_layer import quantize

    cov = bundle.layer(block, name)
    if not cov.is_full:
        raise WfvizError(f"Block {block} / {name} of bundle '{bundle.name}' has no full matrix; "
                         "measured gaps need one (collect it with --full-layers).")
    W = np.random.default_rng(seed).standard_normal((rows, cov.n))
    res = {m: quantize(W, cov.matrix, method=m, rate=rate, rotation=rotation, seed=seed,
                       device=device, rate_metric="column_entropy")
           for m in ("gptq-ec", "watersic")}
    g, w = res["gptq-ec"], res["watersic"]
    raw = 0.5 * float(np.log2(g.distortion / w.distortion))
    return {"measured": raw + (g.rate - w.rate), "raw": raw, "rate_gptq_ec": g.rate,
            "rate_watersic": w.rate, "distortion_gptq_ec": g.distortion,
            "distortion_watersic": w.distortion}


def _summary(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max()),
            "count": int(arr.size)}


def bundle_report(bundle: Bundle, *, haar_seeds: int = 5, measure: bool = False,
                  rate: float = MEASURE_RATE, device: str = "auto", progress=None) -> dict:
    """Predicted (and optionally measured) GPTQ-vs-WaterSIC gaps for every layer of a bundle.

    Parameters
    ----------
    bundle : Bundle
    haar_seeds : int
        Haar rotations averaged per layer (seeds 0..haar_seeds-1).
    measure : bool
        Also quantize the layers stored in full at ``rate`` bits (identity and Hadamard bases).
    rate : float
        Rate of the measurement, high enough for the high-rate prediction to hold.
    device : str
        Torch device for the measurement.
    progress : callable, optional
        ``progress(done, total, message)`` after every layer (and every measurement).

    Returns
    -------
    dict
        ``layers`` (one dict per layer), ``by_type`` (input → basis → mean/min/max/count),
        ``measured`` (list, or None when not asked) and provenance fields.

    Examples
    --------
    >>> r = bundle_report(load_bundle("smollm2-135m-wikitext2"))  # doctest: +SKIP
    >>> sorted(r["by_type"])  # doctest: +SKIP
    ['down', 'gate_up', 'o', 'qkv']
    """
    if haar_seeds < 1:
        raise WfvizError(f"haar_seeds must be >= 1, got {haar_seeds}.")
    todo = bundle.layers
    full = [r for r in todo if r[3]] if measure else []
    total = len(todo) + 2 * len(full)

    def tick(done: int, message: str) -> None:
        if progress is not None:
            progress(done, total, message)

    layers = []
    for b, name, _, _ in todo:
        layers.append(layer_gaps(bundle, b, name, haar_seeds=haar_seeds))
        tick(len(layers), f"predicted gaps: block {b} {name}")
    by_type = {}
    for name in [i for i in LAYER_INPUTS if any(r["input"] == i for r in layers)]:
        rows = [r for r in layers if r["input"] == name]
        by_type[name] = {basis: _summary([r[basis] for r in rows]) for basis in PREDICTED}
    measured = None
    if measure:
        measured = []
        for r in (r for r in layers if r["has_full"]):
            for rot in ("identity", "hadamard"):
                measured.append({"block": r["block"], "input": r["input"], "rotation": rot,
                                 "rate": rate, "predicted": r[rot],
                                 **measured_gap(bundle, r["block"], r["input"], rate=rate,
                                                rotation=rot, device=device)})
                tick(len(layers) + len(measured),
                     f"measured: block {r['block']} {r['input']} {rot}")
    m = bundle.manifest
    return {"bundle": bundle.name, "model": bundle.model_label, "tokens": m.get("tokens"),
            "haar_seeds": haar_seeds, "layers": layers, "by_type": by_type,
            "measured": measured, "paper_claim": PAPER_CLAIM}


def _f(x) -> str:
    return "inf" if x is None or not np.isfinite(x) else f"{x:.3f}"


def report_text(report: dict) -> str:
    """Plain-text tables of :func:`bundle_report` output (by type, then by layer).

    Examples
    --------
    >>> print(report_text({"bundle": "b", "model": "m", "tokens": 1, "haar_seeds": 1,
    ...     "layers": [], "by_type": {}, "measured": None, "paper_claim": "c"}).splitlines()[0])
    Predicted high-rate gap of GPTQ-EC over WaterSIC, ½·log2(AM(d)/GM(d)) bits — m, bundle b
    """
    lines = [f"Predicted high-rate gap of GPTQ-EC over WaterSIC, ½·log2(AM(d)/GM(d)) bits — "
             f"{report['model']}, bundle {report['bundle']}",
             f"({report['tokens']} tokens; Haar: mean over {report['haar_seeds']} seeds)", "",
             "By layer type (mean [min, max] over blocks):",
             f"{'input':<20}{'identity':>24}{'Haar':>24}{'Hadamard':>24}"]
    for name, s in report["by_type"].items():
        cells = [f"{_f(s[b]['mean'])} [{_f(s[b]['min'])}, {_f(s[b]['max'])}]" for b in PREDICTED]
        title = LAYER_INPUT_NAMES.get(name, name)
        lines.append(f"{title:<20}" + "".join(f"{c:>24}" for c in cells))
    lines += ["", "By layer:",
              f"{'block':>5}  {'input':<8}{'n':>6}{'identity':>10}{'Haar ± sd':>18}"
              f"{'Hadamard':>10}"]
    for r in report["layers"]:
        haar = f"{_f(r['haar'])} ± {_f(r['haar_std'])}"
        lines.append(f"{r['block']:>5}  {r['input']:<8}{r['n']:>6}{_f(r['identity']):>10}"
                     f"{haar:>18}{_f(r['hadamard']):>10}")
    if report["measured"] is not None:
        lines += ["", "Measured on the full layers: ½·log2(D_gptq-ec / D_watersic) + (R_gptq-ec − "
                  "R_watersic), column_entropy rates, bits:",
                  f"{'block':>5}  {'input':<8}{'basis':<10}{'R gptq-ec':>10}{'R watersic':>11}"
                  f"{'predicted':>11}{'measured':>10}"]
        lines += [f"{m['block']:>5}  {m['input']:<8}{m['rotation']:<10}{m['rate_gptq_ec']:>10.3f}"
                  f"{m['rate_watersic']:>11.3f}{_f(m['predicted']):>11}{_f(m['measured']):>10}"
                  for m in report["measured"]]
    lines += ["", f"Compare: {report['paper_claim']}"]
    return "\n".join(lines)


def layer_warnings(cov: Covariance, tokens: int | None, notes) -> str:
    """What is suspicious about one layer's statistics, as one short ``;``-joined line.

    Examples
    --------
    >>> layer_warnings(Covariance(eigenvalues=np.array([2.0, 1.0])), 1, [])
    'only 1 tokens < n: Σ_X is singular'
    """
    diag, n = cov.diag, cov.n
    out = []
    if tokens is not None and tokens < n:
        out.append(f"only {tokens} tokens < n: Σ_X is singular")
    elif tokens is not None and tokens < 4 * n:
        out.append(f"{tokens / n:.1f} tokens per dimension: small eigenvalues are noisy")
    if any("negative" in note for note in notes):
        out.append("negative eigenvalues (clipped)")
    dead = count_dead(diag)
    if dead:
        out.append(f"{dead} dead channels (taken out before any rotation)")
    if any("damping" in note for note in notes):
        out.append("Cholesky needed damping")
    return "; ".join(out)


def layer_row(cov: Covariance, *, tokens: int | None = None, haar_seeds: int = 0) -> dict:
    """One row of the per-layer table: size, spectrum, predicted gaps, dead and outlier
    channels, and warnings.

    Gaps (bits) are GPTQ-EC's predicted high-rate excess over WaterSIC,
    ``½ log2(AM(d)/GM(d))`` with GPTQ's ``d``, in each of :data:`TABLE_BASES` the source
    supports (None where it does not), and with ``haar_seeds`` the Haar mean and spread.

    Examples
    --------
    >>> row = layer_row(Covariance(eigenvalues=np.array([4.0, 1.0]), matrix=np.diag([4.0, 1.0])))
    >>> row["n"], round(row["gap_identity"], 4), row["dead_features"]
    (2, 0.161, 0)
    """
    lam, diag = cov.eigenvalues, cov.diag
    notes = list(cov.notes)
    row = {"n": cov.n,
           "condition_number": float(lam[0] / lam[-1]) if lam[-1] > 0 else None,
           "am_gm_eigenvalue": 2.0 ** log2_am_gm(lam)}
    for basis in TABLE_BASES:
        try:
            row[f"gap_{basis}"] = predicted_gap(cov, basis, notes=notes)
        except WfvizError:
            row[f"gap_{basis}"] = None
    if haar_seeds:
        haar = haar_gap(cov, seeds=haar_seeds)
        row.update(gap_haar=haar["mean"], gap_haar_std=haar["std"])
    row["dead_features"] = count_dead(diag)
    row["top_outliers"] = ([] if diag is None else
                           [int(j) for j in top_channels(diag, 3, min_ratio=OUTLIER_RATIO)])
    row["warnings"] = layer_warnings(cov, tokens, notes)
    return row


def layer_table(bundle: Bundle, *, haar_seeds: int = 0) -> list[dict]:
    """:func:`layer_row` of every layer of a bundle, with its block, input and storage.

    Full matrices are not rebuilt (the stored spectra and Cholesky diagonals are enough) except
    for layers with dead features, whose stored diagonals include them: the predictions use the
    live features, as every quantizer does.

    Examples
    --------
    >>> rows = layer_table(load_bundle("smollm2-135m-wikitext2"))  # doctest: +SKIP
    >>> len(rows), sorted(rows[0])[:3]  # doctest: +SKIP
    (120, ['am_gm_eigenvalue', 'block', 'condition_number'])
    """
    tokens = bundle.manifest.get("tokens")
    gptq_order = bundle.manifest.get("format_version", 1) >= 2
    rows = []
    for block, name, _, has_full in bundle.layers:
        cov = bundle.layer(block, name, full=False)
        if has_full and count_dead(cov.diag):
            cov = bundle.layer(block, name)
        rows.append({"block": block, "input": name, "full": has_full, "gptq_order": gptq_order,
                     **layer_row(cov, tokens=tokens, haar_seeds=haar_seeds)})
    return rows


def claim_summary(rows: list[dict], *, basis: str = "haar", bits: float = CLAIM_BITS) -> dict:
    """The paper's by-layer-type claim checked on a per-layer table.

    Returns
    -------
    dict
        ``by_type``: input → mean and max gap in ``basis`` and whether each is ≤ ``bits``;
        ``held`` and ``failed``: the layer types whose mean is (not) within ``bits``;
        ``worst``: the block, input and gap of the worst layer.

    Examples
    --------
    >>> rows = [{"block": 0, "input": "o", "gap_haar": 0.2}, {"block": 1, "input": "o",
    ...          "gap_haar": 0.05}, {"block": 0, "input": "down", "gap_haar": 0.03}]
    >>> s = claim_summary(rows)
    >>> s["held"], s["failed"], s["worst"]["block"]
    (['down'], ['o'], 0)
    """
    key = f"gap_{basis}"
    usable = [r for r in rows if r.get(key) is not None]
    if not usable:
        raise WfvizError(f"No layer has a {basis} gap; add the {basis} predictions first.")
    by_type = {}
    for name in sorted({r["input"] for r in usable}, key=_type_order):
        gaps = np.array([r[key] for r in usable if r["input"] == name])
        by_type[name] = {"mean": float(gaps.mean()), "max": float(gaps.max()),
                         "mean_within": bool(gaps.mean() <= bits),
                         "all_within": bool(gaps.max() <= bits)}
    worst = max(usable, key=lambda r: r[key])
    return {"basis": basis, "bits": bits, "by_type": by_type,
            "held": [k for k, v in by_type.items() if v["mean_within"]],
            "failed": [k for k, v in by_type.items() if not v["mean_within"]],
            "worst": {"block": worst["block"], "input": worst["input"], "gap": worst[key]}}


def _type_order(name: str) -> int:
    return LAYER_INPUTS.index(name) if name in LAYER_INPUTS else len(LAYER_INPUTS)
