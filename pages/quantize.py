"""Quantize page: WaterSIC against GPTQ under rotations, live, with the theory lines."""

import time
import warnings

import numpy as np
import streamlit as st

from pages._quantize_results import show_results
from pages._ui import (
    ROTATION_NAMES,
    cov_key,
    current_covariance,
    ensure_frame,
    show_error,
    source_caption,
    touch_session,
)
from wfviz.device import DEVICES, device_label
from wfviz.errors import Cancelled, ResourceError, WfvizError, WfvizWarning
from wfviz.experiments import iter_sweep
from wfviz.jobs import heavy_slot
from wfviz.quantizers import METHODS
from wfviz.rates import RATE_METRICS

RESULTS_KEY = "q_results"
CANCEL_KEY = "q_cancel_requested"
PARTIAL_KEY = "q_partial"

ensure_frame("pages/quantize.py")
st.title("Quantize: WaterSIC vs GPTQ")
cov = current_covariance()
if cov is None:
    st.stop()
source_caption(cov)
st.markdown(
    "Quantize a weight matrix W with rows i.i.d. N(0, 1) (the theory's model) against this Σ_X, "
    "with every chosen method × rotation × rate, and compare the measured distortion with the "
    "information-theoretic limit. **gptq-ec** uses one step for all columns (equal rate); "
    "**watersic** uses the step c/L_jj (waterfilling on the Cholesky diagonal). **gptq** and "
    "**rtn** are the classic fixed 2^b-level grids.")


def _rotation_choices() -> list[str]:
    usable = [r for r in ROTATION_NAMES if cov.supports(r)]
    if len(usable) < len(ROTATION_NAMES):
        st.info("This source has eigenvalues only, so W can be quantized only where the basis "
                "does not matter: Haar (any rotation of diag(λ)) and the eigenbasis. Identity, "
                "Hadamard and act-order depend on the native channels and need the full Σ_X.")
    return usable


def _controls() -> dict | None:
    rotations = _rotation_choices()
    with st.form("q_form"):
        c1, c2 = st.columns(2)
        methods = c1.multiselect("Methods", list(METHODS), default=["gptq-ec", "watersic"],
                                 key="q_methods", help="; ".join(f"{k}: {v}"
                                                               for k, v in METHODS.items()))
        default_rot = [r for r in ("identity", "haar", "hadamard") if r in rotations]
        rots = c2.multiselect("Rotations", rotations, default=default_rot or rotations[:1],
                              key="q_rotations", format_func=lambda r: ROTATION_NAMES[r])
        c1, c2, c3, c4 = st.columns(4)
        lo = c1.number_input("Lowest rate", 1.0, 12.0, 1.0, 0.5, key="q_rate_lo")
        hi = c2.number_input("Highest rate", 1.0, 12.0, 5.0, 0.5, key="q_rate_hi",
                             help="With 256 rows, per-column entropies read low "
                                  "above about 5 bits.")
        points = c3.number_input("Rates", 1, 12, 6, 1, key="q_points")
        rows = c4.number_input("Rows of W", 16, 8192, 256, 16, key="q_rows",
                               help="Few rows make per-column entropy read low at high rate.")
        c1, c2, c3 = st.columns(3)
        seed = c1.number_input("Seed", 0, 2**31 - 1, 0, 1, key="q_seed")
        device = c2.selectbox("Device", list(DEVICES), key="q_device",
                              help=f"auto uses a GPU when torch sees one; here: {device_label()}")
        metric = c3.selectbox("Rate metric", list(RATE_METRICS), key="q_metric",
                              help="; ".join(f"{k}: {v}" for k, v in RATE_METRICS.items()))
        run = st.form_submit_button("Run", type="primary", key="q_run")
    if not run:
        return None
    if not methods or not rots:
        st.error("Pick at least one method and one rotation, then press Run.")
        return None
    rates = [round(float(r), 3) for r in np.linspace(lo, max(lo, hi), int(points))]
    return dict(methods=tuple(methods), rotations=tuple(rots), rates=tuple(rates),
                rows=int(rows), seed=int(seed), device=device, rate_metric=metric)


def _run(settings: dict) -> None:
    st.session_state[CANCEL_KEY] = False
    finished: list[dict] = []  # rows of a cancelled sweep that did finish
    columns: dict = {}  # per-column data of every point, for the per-column view
    # Cancel reruns the page, and Streamlit stops this run at its next st call: whatever the
    # sweep has finished by then is in this session-state entry, which the rerun shows.
    st.session_state[PARTIAL_KEY] = dict(source=cov_key(cov), settings=settings,
                                         rows=finished, columns=columns, cancelled=True)
    cancel_slot = st.empty()  # the button goes once the run ends
    cancel_slot.button("Cancel", key="q_cancel", on_click=lambda: st.session_state.update(
        {CANCEL_KEY: True}))
    with st.status("Quantizing…", expanded=True) as status:
        queue_note = st.empty()
        bar = st.progress(0.0, text="starting")
        notices = []

        def progress(frac, msg):
            bar.progress(min(max(float(frac), 0.0), 1.0), text=msg)

        shown = {}

        def waiting(state):
            # An update is also where Streamlit stops a queued run that the user left.
            if st.session_state.get(CANCEL_KEY, False):
                raise Cancelled
            if shown.get("ahead") == state.ahead and state.waited_s - shown["at"] < 2.0:
                return
            shown.update(ahead=state.ahead, at=state.waited_s)
            runs = "run" if state.ahead == 1 else "runs"
            status.update(label=f"Queued: {state.ahead} {runs} ahead of you")
            queue_note.info(f"{state.ahead} {runs} ahead of you; waiting… ({state.waited_s:.0f} s "
                            "so far: the server runs only a few sweeps at a time, for all "
                            "sessions together)", icon=":material/hourglass_top:")

        try:
            with heavy_slot(on_wait=waiting, limit_threads=touch_session() > 1) as slot:
                if slot.waited:
                    status.update(label="Quantizing…")
                    queue_note.caption(f"Waited {slot.wait_s:.1f} s behind {slot.first_ahead} "
                                       f"run{'s' if slot.first_ahead != 1 else ''} of other "
                                       "sessions.")
                else:
                    queue_note.empty()
                started = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", WfvizWarning)
                    for point in iter_sweep(
                            cov, **settings, progress=progress, keep_columns=True,
                            cancel=lambda: st.session_state.get(CANCEL_KEY, False)):
                        finished.append(point.as_row())
                        columns[(point.method, point.rotation, point.target_rate)] = \
                            point.columns
                notices += [str(w.message) for w in caught if w.category is WfvizWarning]
                rows = finished
                seconds = time.perf_counter() - started
        except Cancelled:
            _keep_partial()
            status.update(label=f"Cancelled: showing the {len(finished)} points that had "
                          "finished." if finished else "Cancelled before any point finished; "
                          "the previous results are kept.", state="error")
            return
        except (WfvizError, ResourceError, MemoryError) as exc:
            cancel_slot.empty()
            st.session_state.pop(PARTIAL_KEY, None)  # a failed run is not a cancelled one
            status.update(label="Stopped", state="error")
            show_error(exc)
            return
        for note in notices:
            st.warning(note)
        status.update(label=f"Done: {len(rows)} points in {seconds:.1f} s", state="complete",
                      expanded=False)
    cancel_slot.empty()
    st.session_state.pop(PARTIAL_KEY, None)
    st.session_state[RESULTS_KEY] = dict(source=cov_key(cov), settings=settings, rows=rows,
                                         columns=columns)


def _keep_partial() -> None:
    """A run that stopped early leaves its finished points: they become the results."""
    partial = st.session_state.pop(PARTIAL_KEY, None)
    if partial and partial["rows"]:
        st.session_state[RESULTS_KEY] = partial


_keep_partial()
settings = _controls()
run_area = st.container()
# A new run replaces the previous results at once (one empty element over their block): the
# browser then redraws no stale charts while the sweep runs, and on a 2-core machine that
# also serves the page this leaves the CPU to the sweep. Other reruns keep them in place.
results_area = st.container() if settings is None else st.empty().container()
if settings is not None:
    with run_area:
        _run(settings)

with results_area:
    result = st.session_state.get(RESULTS_KEY)
    if not result or result["source"] != cov_key(cov):
        st.info("Choose the settings and press **Run**. The default (2 methods × 3 rotations × "
                "6 rates, 256 rows) is the demo of the WaterSIC vs GPTQ gap.")
        st.stop()
    if result.get("cancelled"):
        s = result["settings"]
        total = len(s["methods"]) * len(s["rotations"]) * len(s["rates"])
        st.warning(f"That run was cancelled: {len(result['rows'])} of {total} points had "
                   "finished and are shown. Press **Run** for the rest.")
    show_results(cov, result)
