"""Reading whole-model grid results (``wfviz quantize-model --out DIR``): the one reader.

A results folder holds ``results.json`` (provenance, the reference model's row, one row per
point) and ``points/<id>.json`` (each point's per-layer table). The shipped SmolLM2-135M grid
sits beside its Σ_X bundle, in ``<bundle>/model_grid/``, so the app shows it without the model
installed. Files are JSON only; nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WfvizError

__all__ = ["ModelResults", "load_results", "shipped_results", "curves", "layer_matrix",
           "kind_summary", "measured_near", "group_size",
           "GRID_DIR", "KINDS"]

GRID_DIR = "model_grid"
"""Folder of a bundle that holds its shipped whole-model grid."""
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Linear-layer kinds of a Llama-style decoder block, in processing order (the heatmap's
columns); other kinds follow in name order."""
_FORMAT = "wfviz whole-model quantization grid"


@dataclass(frozen=True, eq=False)
class ModelResults:
    """A grid's results.

    Attributes
    ----------
    path : Path
        The results folder.
    provenance : dict
        Model and text hashes, token spans, window length, versions, date, command.
    reference : dict or None
        The reference (unquantized) model's row: ``nll``, ``ppl``, ``eval_tokens``…
    points : list of dict
        One row per point (keys ``wfviz.model_grid.CSV_COLUMNS``).
    """

    path: Path
    provenance: dict
    reference: dict | None
    points: list = field(default_factory=list)

    def point(self, point_id: str) -> dict:
        """The row of one point; ``WfvizError`` for an unknown id."""
        for row in self.points:
            if row["id"] == point_id:
                return row
        raise WfvizError(f"No point {point_id!r} in {self.path}; it holds "
                         f"{', '.join(r['id'] for r in self.points) or 'no points'}.")

    def layers(self, point_id: str) -> list[dict]:
        """The per-layer table of one point (one dict per linear layer)."""
        self.point(point_id)
        doc = _read_json(self.path / "points" / f"{point_id}.json")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise WfvizError(f"{self.path / 'points' / (point_id + '.json')} has no per-layer "
                             "table; rerun the point.")
        return layers

    def spans_text(self) -> str:
        """One line: the calibration and evaluation token spans, the window length, the text.

        Examples
        --------
        >>> t = {"name": "wiki.test.raw", "sha256": "0123456789abcdef"}
        >>> ModelResults(Path("."), {"spans": {"calibration": {"text": t, "start": 0,
        ...     "tokens": 4096}, "evaluation": {"text": t, "start": 4096, "tokens": 2048},
        ...     "seq_len": 2048}}, None).spans_text()  # doctest: +NORMALIZE_WHITESPACE
        'calibration tokens 0–4,096 and evaluation tokens 4,096–6,144 of wiki.test.raw
         (sha256 0123456789ab…), windows of 2,048 tokens'
        """
        spans = self.provenance.get("spans") or {}
        try:
            cal, ev = spans["calibration"], spans["evaluation"]
            texts = {cal["text"]["sha256"]: cal["text"], ev["text"]["sha256"]: ev["text"]}
            where = " and ".join(f"{t['name']} (sha256 {t['sha256'][:12]}…)"
                                 for t in texts.values())
            return (f"calibration tokens {cal['start']:,}–{cal['start'] + cal['tokens']:,} and "
                    f"evaluation tokens {ev['start']:,}–{ev['start'] + ev['tokens']:,} of "
                    f"{where}, windows of {spans['seq_len']:,} tokens")
        except (KeyError, TypeError):
            return "token spans not recorded"


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WfvizError(f"{path} does not exist; run `wfviz quantize-model --out "
                         f"{Path(path).parent}` first.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WfvizError(f"Cannot read {path} ({exc}); it is not a wfviz results file.") from exc
    if not isinstance(doc, dict):
        raise WfvizError(f"{path} is not a wfviz results file (expected a JSON object).")
    return doc


def load_results(path) -> ModelResults:
    """Open a results folder (or its ``results.json``).

    Raises
    ------
    WfvizError
        A missing or unreadable file, or one of another format.

    Examples
    --------
    >>> load_results("/no/such/dir")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    wfviz.errors.WfvizError: /no/such/dir/results.json does not exist; ...
    """
    path = Path(path)
    folder = path.parent if path.name == "results.json" else path
    doc = _read_json(folder / "results.json")
    if doc.get("format") != _FORMAT or not isinstance(doc.get("points"), list):
        raise WfvizError(f"{folder / 'results.json'} is not a wfviz whole-model results file.")
    return ModelResults(path=folder, provenance=doc.get("provenance") or {},
                        reference=doc.get("reference"), points=list(doc["points"]))


def shipped_results() -> ModelResults | None:
    """The first installed bundle's grid (``<bundle>/model_grid``), or None when there is none."""
    from .bundles import list_bundles

    for bundle in list_bundles():
        if (bundle.path / GRID_DIR / "results.json").is_file():
            return load_results(bundle.path / GRID_DIR)
    return None


def group_size(row: dict) -> int:
    """The scale-group size of a point (0: one scale per row), read from its id.

    Examples
    --------
    >>> [group_size({"id": i}) for i in ("gptq_identity_4b-g128_one-shot", "rtn_identity_4b")]
    [128, 0]
    """
    match = re.search(r"b-g(\d+)_", row.get("id", ""))
    return int(match.group(1)) if match else 0


def curves(results: ModelResults, value: str = "ppl") -> list[dict]:
    """Points grouped into curves: one per (method, rotation, calibration, rate metric).

    Each curve is ``dict(method, rotation, calibration, rate_metric, group_size, rate_label,
    ids, rates, values)``, sorted by measured rate. Points whose ``value`` is missing are left
    out; a rate metric splits curves, so no curve mixes two ways of counting bits.

    Examples
    --------
    >>> r = ModelResults(Path("."), {}, None, [
    ...     dict(id="a", method="gptq", rotation="identity", calibration="one-shot",
    ...          rate_metric="log_cardinality", rate_label="x", rate=4.0, ppl=30.0),
    ...     dict(id="b", method="gptq", rotation="identity", calibration="one-shot",
    ...          rate_metric="log_cardinality", rate_label="x", rate=3.0, ppl=50.0)])
    >>> [(c["method"], c["rates"], c["values"]) for c in curves(r)]
    [('gptq', [3.0, 4.0], [50.0, 30.0])]
    """
    if value not in ("ppl", "kl", "nll"):
        raise WfvizError(f"Unknown value {value!r}; use ppl, kl or nll.")
    groups: dict[tuple, list[dict]] = {}
    for row in results.points:
        v = row.get(value)
        if v is None or not math.isfinite(float(v)) or row.get("plan"):
            continue
        key = (row["method"], row["rotation"], row["calibration"], row["rate_metric"],
               group_size(row))
        groups.setdefault(key, []).append(row)
    out = []
    for (method, rotation, calibration, metric, group), rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["rate"])
        out.append(dict(method=method, rotation=rotation, calibration=calibration,
                        rate_metric=metric, group_size=group,
                        rate_label=rows[0].get("rate_label", metric),
                        ids=[r["id"] for r in rows], rates=[r["rate"] for r in rows],
                        values=[r[value] for r in rows]))
    return out


def layer_matrix(layers: list[dict], value: str) -> tuple[list[int], list[str], list[list]]:
    """A blocks × kinds table of one per-layer value (None where a layer is absent).

    Returns
    -------
    blocks : list of int
    kinds : list of str
        The kinds present, in :data:`KINDS` order.
    matrix : list of lists
        ``matrix[i][j]`` is ``value`` of block ``blocks[i]``, kind ``kinds[j]``.

    Examples
    --------
    >>> layer_matrix([dict(block=0, kind="q_proj", bits=3.0),
    ...               dict(block=1, kind="q_proj", bits=2.0)], "bits")
    ([0, 1], ['q_proj'], [[3.0], [2.0]])
    """
    if layers and value not in layers[0]:
        raise WfvizError(f"Per-layer tables have no column {value!r}; they have "
                         f"{', '.join(layers[0])}.")
    blocks = sorted({int(r["block"]) for r in layers})
    present = {r["kind"] for r in layers}
    kinds = [k for k in KINDS if k in present] + sorted(present - set(KINDS))
    cell = {(int(r["block"]), r["kind"]): r[value] for r in layers}
    return blocks, kinds, [[cell.get((b, k)) for k in kinds] for b in blocks]


def kind_summary(layers: list[dict]) -> list[dict]:
    """Per layer kind: layers, weights, bits per weight, relative distortion and predicted gap.

    Rates and the predicted gap are weight-weighted means; the relative distortion is the mean
    over the kind's layers (each is already relative to its own layer's output energy).

    Examples
    --------
    >>> rows = [dict(kind="q_proj", a=2, n=4, rate=3.0, relative_distortion=0.01,
    ...              predicted_gap_bits=0.2),
    ...         dict(kind="q_proj", a=2, n=2, rate=4.0, relative_distortion=0.03,
    ...              predicted_gap_bits=0.1)]
    >>> s = kind_summary(rows)[0]
    >>> s["kind"], s["layers"], s["weights"], round(s["rate"], 4), s["relative_distortion"]
    ('q_proj', 2, 12, 3.3333, 0.02)
    """
    out = []
    for kind in [k for k in KINDS if any(r["kind"] == k for r in layers)] + sorted(
            {r["kind"] for r in layers} - set(KINDS)):
        rows = [r for r in layers if r["kind"] == kind]
        w = [int(r["a"]) * int(r["n"]) for r in rows]
        total = sum(w)

        def mean(key, rows=rows, w=w, total=total):
            return sum(wi * r[key] for wi, r in zip(w, rows, strict=True)) / total
        out.append(dict(
            kind=kind, layers=len(rows), weights=total,
            rate=mean("rate"),
            relative_distortion=sum(r["relative_distortion"] for r in rows) / len(rows),
            predicted_gap_bits=mean("predicted_gap_bits")))
    return out


def measured_near(results: ModelResults, method: str, rotation: str, rate: float, *,
                  tol: float = 0.15) -> list[dict]:
    """One-shot points of ``method`` · ``rotation`` measured within ``tol`` bit of ``rate``,
    uniform or planned, with their ΔNLL against the reference model (nats per token).

    Examples
    --------
    >>> r = ModelResults(Path("."), {}, {"nll": 3.0}, [
    ...     dict(id="a", method="watersic", rotation="hadamard", calibration="one-shot",
    ...          plan=None, rate=3.01, nll=3.2, ppl=24.5),
    ...     dict(id="b", method="watersic", rotation="hadamard", calibration="one-shot",
    ...          plan="waterfill.json", rate=2.5, nll=3.3, ppl=27.1)])
    >>> [(m["plan"], round(m["dnll"], 3)) for m in measured_near(r, "watersic", "hadamard", 3)]
    [('uniform', 0.2)]
    """
    ref = (results.reference or {}).get("nll")
    if ref is None:
        return []
    return [{"plan": row.get("plan") or "uniform", "rate": row["rate"], "dnll": row["nll"] - ref,
             "ppl": row["ppl"], "id": row["id"]}
            for row in results.points
            if row["method"] == method and row["rotation"] == rotation
            and row.get("calibration", "one-shot") == "one-shot" and row.get("nll") is not None
            and abs(float(row["rate"]) - rate) <= tol]
