"""Quantize page: WaterSIC against GPTQ under rotations, live, with the theory lines.

The settings are checked as they change (``wfviz.experiments.plan_sweep``): the page says which
rates each method will run and shows every problem next to the Run button. A run goes in a
worker thread (``wfviz.background.BackgroundRun``) so that this script redraws its progress
twice a second and Cancel takes effect at once; the run lives in session state, so a rerun
(any widget) follows it again instead of stopping it.
"""

import numpy as np
import streamlit as st

from pages._quantize_results import show_results
from pages._ui import (
    ROTATION_NAMES,
    cov_key,
    current_covariance,
    current_source,
    ensure_frame,
    show_error,
    source_caption,
    sticky_multiselect,
    touch_session,
)
from wfviz.background import BackgroundRun
from wfviz.device import DEVICES, device_label
from wfviz.errors import ResourceError, WfvizError
from wfviz.experiments import iter_plan, plan_sweep
from wfviz.quantizers import METHODS
from wfviz.rates import RATE_METRICS
from wfviz.validation import count_dead
from wfviz.weights import source_weights, source_weights_reason

RESULTS_KEY = "q_results"
RUN_KEY = "q_run_state"
POLL_S = 0.5  # the progress line is redrawn this often while a run goes
ORPHAN_S = 10.0  # a run that no page has followed for this long cancels itself
WEIGHTS = {"gaussian": "i.i.d. Gaussian rows N(0, 1), the theory's model",
           "real": "the layer's real weights (SmolLM2-135M-Instruct Q4_1 GGUF, dequantized)"}
DAMPINGS = [None, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
DEFAULT_ROTATIONS = ["identity", "haar", "hadamard"]

ensure_frame("pages/quantize.py")
st.title("Quantize: WaterSIC vs GPTQ")
cov = current_covariance()
if cov is None:
    st.stop()
source_caption(cov)
st.markdown(
    "Quantize a weight matrix W against this Σ_X with every chosen method × rotation × rate, "
    "and compare the measured distortion with the information-theoretic limit. **gptq-ec** "
    "uses one step for all columns (equal rate); **watersic** uses the step c/L_jj "
    "(waterfilling on the Cholesky diagonal). **gptq** and **rtn** are the classic fixed "
    "2^b-level grids.")


@st.cache_resource(max_entries=2, show_spinner="Reading the layer's weights from the GGUF…")
def _real_weights(spec: str) -> tuple[np.ndarray, str, float]:
    """``(W, label, mean(W²))`` of a bundle layer (raises WfvizError)."""
    W, label = source_weights(spec)
    return W, label, float(np.mean(np.square(W, dtype=np.float64)))


def _weights(choice: str) -> tuple[dict | None, str | None]:
    """The weights' settings (``W``, its label and variance, ``rows``), or the reason there
    are none."""
    if choice == "gaussian":
        return dict(W=None, label=WEIGHTS["gaussian"], variance=1.0), None
    spec = current_source() or ""
    reason = source_weights_reason(spec)
    if reason is not None:
        return None, reason
    try:
        W, label, variance = _real_weights(spec)
    except WfvizError as exc:
        return None, str(exc)
    return dict(W=W, label=label, variance=variance, rows=W.shape[0]), None


def _rates(lo: float, hi: float, points: int) -> list[float]:
    return [round(float(r), 3) for r in np.linspace(lo, hi, int(points))]


def _controls() -> tuple[dict, object, list[str]]:
    """The widgets; returns the settings, their plan and the problems to show."""
    rotations = [r for r in ROTATION_NAMES if cov.supports(r)]
    if len(rotations) < len(ROTATION_NAMES):
        st.info("This source has eigenvalues only, so W can be quantized only where the basis "
                "does not matter: Haar (any rotation of diag(λ)) and the eigenbasis. Identity, "
                "Hadamard and act-order depend on the native channels and need the full Σ_X.")
    c1, c2 = st.columns([1, 2])  # three rotation names are long
    methods = c1.multiselect("Methods", list(METHODS), default=["gptq-ec", "watersic"],
                             key="q_methods",
                             help="; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    rots = sticky_multiselect("Rotations", rotations, DEFAULT_ROTATIONS, "q_rotations",
                              container=c2, format_func=lambda r: ROTATION_NAMES[r])
    choice = st.radio("Weights W", list(WEIGHTS), format_func=WEIGHTS.get, key="q_weights",
                      horizontal=True,
                      help="Real weights exist for the bundled blocks whose full Σ_X is "
                           "stored; they are quantized against their own layer's Σ_X.")
    weights, problem = _weights(choice)
    c1, c2, c3, c4 = st.columns(4)
    lo = c1.number_input("Lowest rate", 1.0, 12.0, 2.0, 0.5, key="q_rate_lo")
    hi = c2.number_input("Highest rate", 1.0, 12.0, 7.0, 0.5, key="q_rate_hi")
    points = c3.number_input("Rates", 1, 12, 6, 1, key="q_points")
    if choice == "gaussian":
        rows = int(c4.number_input("Rows of W", 16, 8192, 256, 16, key="q_rows",
                                   help="Rows a of the i.i.d. N(0, 1) weights."))
    else:
        rows = weights["rows"] if weights else 0
        c4.metric("Rows of W", f"{rows:,}" if rows else "–",
                  help="The layer's own rows (its output features).")
    c1, c2 = st.columns(2)
    seed = c1.number_input("Seed", 0, 2**31 - 1, 0, 1, key="q_seed",
                           help="Seeds the Gaussian weights and the random rotations.")
    metric = c2.selectbox("Rate metric", list(RATE_METRICS),
                          index=list(RATE_METRICS).index("parametric_coded"), key="q_metric",
                          help="; ".join(f"{k}: {v}" for k, v in RATE_METRICS.items()))
    with st.expander("Advanced"):
        c1, c2 = st.columns(2)
        device = c1.selectbox("Device", list(DEVICES), key="q_device",
                              help=f"auto uses a GPU when torch sees one; here: {device_label()}")
        damping = c2.selectbox(
            "Damping of GPTQ-EC and WaterSIC", DAMPINGS, key="q_damping",
            format_func=lambda d: "their default (1e-4)" if d is None else f"{d:g}",
            help="Relative damping δ: δ·mean(diag Σ) is added to the diagonal of Σ before the "
                 "Cholesky factorisation. More damping flattens d (and changes the "
                 "predictions with it); GPTQ and RTN keep their own (0.01).")
    problems = [problem] if problem else []
    if hi < lo:
        problems.append(f"The highest rate ({hi:g}) is below the lowest ({lo:g}); raise it.")
    rates = _rates(lo, max(lo, hi), points)
    live = cov.n - (count_dead(cov.diag if cov.diag is not None else cov.eigenvalues) or 0)
    plan = plan_sweep(methods, rots, rates, rate_metric=metric, rows=max(rows, 1), n=cov.n,
                      live=live)
    settings = dict(methods=tuple(methods), rotations=tuple(rots), rates=tuple(rates),
                    rows=rows, seed=int(seed), device=device, rate_metric=metric,
                    damping=damping, weights=choice,
                    weights_label=weights["label"] if weights else None,
                    variance=weights["variance"] if weights else 1.0)
    return dict(settings, W=weights["W"] if weights else None), plan, problems + list(
        plan.errors)


def _plan_summary(plan, settings: dict) -> None:
    """Which rates each method will run, next to the Run button."""
    groups = "; ".join(f"{', '.join(m)} at {', '.join(f'{r:g}' for r in rates)} bits"
                       for m, rates in plan.groups)
    st.caption(f"**This run:** {plan.total} points: {groups}; × {len(plan.rotations)} "
               f"rotation{'s' if len(plan.rotations) != 1 else ''}, {settings['rows']:,} rows, "
               f"rates counted as {settings['rate_metric']}.")
    for note in plan.notes:
        st.caption(f":material/info: {note}")


def _cancel() -> None:
    entry = st.session_state.get(RUN_KEY)
    if entry:
        entry["run"].cancel()


def _start(settings: dict, plan) -> None:
    """Start the sweep in a worker thread; the page follows it from session state."""
    keep = {k: v for k, v in settings.items() if k != "W"}
    notices: list[str] = []

    def job(cancel, progress):
        return iter_plan(cov, plan, W=settings["W"], rows=settings["rows"],
                         seed=settings["seed"], device=settings["device"],
                         rate_metric=settings["rate_metric"], damping=settings["damping"],
                         keep_columns=True, notice=notices.append, cancel=cancel,
                         progress=progress)

    run = BackgroundRun(job, plan.total, limit_threads=touch_session() > 1,
                        orphan_s=ORPHAN_S).start()
    st.session_state[RUN_KEY] = dict(run=run, source=cov_key(cov), label=cov.label,
                                     settings=keep, notices=notices)


def _progress_text(status) -> str:
    eta = (f" · about {status.eta_s:.0f} s left" if status.eta_s is not None else "")
    return (f"{status.done} of {status.total} points · {status.elapsed_s:.0f} s{eta}"
            + (f" · {status.message}" if status.message else ""))


def _waited(line, slot) -> None:
    """Once a queued run starts: how long it waited, and behind how many runs."""
    if slot is not None and slot.waited:
        runs = "run" if slot.first_ahead == 1 else "runs"
        line.caption(f"Waited {slot.wait_s:.1f} s behind {slot.first_ahead} {runs} of other "
                     "sessions.")
    else:
        line.empty()


def _follow(entry: dict) -> None:
    """Redraw the run's progress until it ends, then keep its points as the results."""
    run = entry["run"]
    box = st.status("Quantizing…", expanded=True)
    line = box.empty()
    bar = box.progress(0.0, text="starting")
    stop = st.empty()
    stop.button("Cancel", key="q_cancel", on_click=_cancel)
    # Cancel shows at once: the worker stops at its next poll, and keeps nothing after it.
    # Any other widget stops this script (Streamlit's fast reruns) and the rerun follows the
    # run again; a run that no script follows any more (page left, tab closed) cancels itself
    # after ORPHAN_S (a stopped script cannot tell a rerun from the end of its session).
    while True:
        status = run.status()
        if status.queue is not None:
            ahead = status.queue.ahead
            box.update(label=f"Queued: {ahead} run{'s' if ahead != 1 else ''} ahead of you")
            line.info(f"Waiting {status.queue.waited_s:.0f} s so far: the server runs only a "
                      "few sweeps at a time, for all sessions together.",
                      icon=":material/hourglass_top:")
        else:
            box.update(label="Quantizing…")
            _waited(line, status.slot)
        bar.progress(status.fraction, text=_progress_text(status))
        if run.wait(POLL_S) or run.cancel_requested:
            break
    status = run.status()
    stop.empty()
    _waited(line, status.slot)
    st.session_state.pop(RUN_KEY, None)
    if status.error is not None and not run.cancel_requested:
        box.update(label="Stopped", state="error", expanded=False)
        if isinstance(status.error, (WfvizError, ResourceError, MemoryError)):
            show_error(status.error)
            return
        raise status.error
    points, cancelled = run.items, run.cancel_requested
    if cancelled and not points:
        box.update(label="Cancelled", state="error", expanded=False)
        st.warning(f"Cancelled: 0 of {status.total} points kept; the previous results stay.")
        return
    label = (f"Cancelled: {len(points)} of {status.total} points kept" if cancelled
             else f"Done: {len(points)} points in {status.elapsed_s:.1f} s")
    box.update(label=label, state="error" if cancelled else "complete", expanded=False)
    st.session_state[RESULTS_KEY] = dict(
        source=entry["source"], label=entry["label"], settings=entry["settings"],
        rows=[p.as_row() for p in points], total=status.total, cancelled=cancelled,
        notices=list(entry["notices"]),
        columns={(p.method, p.rotation, p.target_rate): p.columns for p in points})


settings, plan, problems = _controls()
entry = st.session_state.get(RUN_KEY)
if entry is not None and entry["source"] != cov_key(cov):
    entry["run"].cancel()  # the source changed under the run
    st.session_state.pop(RUN_KEY)
    entry = None
_plan_summary(plan, settings)
for problem in problems:
    st.error(problem, icon=":material/error:")
clicked = st.button("Run", type="primary", key="q_run", disabled=bool(problems),
                    help="Fix the settings above first." if problems else
                    "A run that is going is cancelled and replaced." if entry else None)
if clicked and not problems:
    if entry is not None:
        entry["run"].cancel()
    _start(settings, plan)
    entry = st.session_state[RUN_KEY]

run_area = st.container()
results_area = st.container()
if entry is not None:
    with run_area:
        _follow(entry)

with results_area:
    result = st.session_state.get(RESULTS_KEY)
    if not result or result["source"] != cov_key(cov):
        if entry is None and not problems:  # never under an error or a run's outcome
            st.info("Press **Run** to quantize. The default (2 methods × 3 rotations × 6 rates "
                    "from 2 to 7 bits, 256 rows) is the demo of the WaterSIC vs GPTQ gap.")
        st.stop()
    if result.get("cancelled"):
        st.warning(f"Cancelled: {len(result['rows'])} of {result['total']} points kept. Press "
                   "**Run** for all of them.")
    show_results(cov, result)
