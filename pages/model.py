"""Model page: what quantizing every linear layer does to a real model's perplexity and KL.

Shows the shipped SmolLM2-135M grid (``<bundle>/model_grid``) without the model installed; a
point's per-layer table as blocks × layer-kind heatmaps next to the layer-level prediction; and
runs one more point in the background (``wfviz.model_jobs``) when the model is installed.
"""

import pandas as pd
import streamlit as st

from pages._model_allocation import allocation_section
from pages._ui import ROTATION_NAMES, chart, ensure_frame, follow_job, show_error
from wfviz.errors import WfvizError
from wfviz.model_jobs import (
    DEFAULT_TEXT,
    PointRequest,
    active_points,
    finished_point,
    model_unavailable_reason,
    running_point,
    start_point,
)
from wfviz.model_results import kind_summary, shipped_results
from wfviz.plots.model import LAYER_VALUES, layer_heatmap_figure, model_curve_figure, model_label
from wfviz.rates import metric_name

RUN_KEY = "model_request"
METHODS = ("watersic", "gptq-ec", "gptq", "rtn")
WHOLE_BITS = ("gptq", "rtn")
TABLE = {"method": "method", "rotation": "rotation", "calibration": "calibration",
         "rate": "bits/weight", "rate_metric": "counted as", "ppl": "perplexity",
         "kl": "KL (nats/token)", "eval_tokens": "eval tokens", "time_s": "time (s)"}

ensure_frame("pages/model.py")
st.title("Model: every linear layer quantized, perplexity and KL")


@st.cache_data(max_entries=1, show_spinner=False)
def _shipped():
    return shipped_results()


@st.cache_data(max_entries=8, show_spinner=False)
def _layers(path: str, point_id: str) -> list[dict]:
    from wfviz.model_results import load_results

    return load_results(path).layers(point_id)


def _point_label(row: dict) -> str:
    cal = "" if row["calibration"] == "one-shot" else ", sequential"
    return (f"{row['method']} · {row['rotation']} · {row['rate']:.2f} bits "
            f"({metric_name(row['rate_metric'])}{cal}) → ppl {row['ppl']:.2f}")


def _results_table(results) -> None:
    rows = [results.reference | {"method": "reference", "rotation": "—", "calibration": "—"}]
    rows += results.points
    df = pd.DataFrame(rows)[list(TABLE)].rename(columns=TABLE)
    df["counted as"] = df["counted as"].map(lambda m: metric_name(m) if isinstance(m, str) else m)
    st.dataframe(df, hide_index=True, width="stretch",
                 column_config={"bits/weight": st.column_config.NumberColumn(format="%.3f"),
                                "perplexity": st.column_config.NumberColumn(format="%.2f"),
                                "KL (nats/token)": st.column_config.NumberColumn(format="%.4f"),
                                "time (s)": st.column_config.NumberColumn(format="%.0f")})


def _chosen(results) -> str:
    """The point the heatmaps show: the user's choice, else gptq at 3 bits without a rotation."""
    ids = [p["id"] for p in results.points]
    if st.session_state.get("m_point") in ids:
        return st.session_state["m_point"]
    return next((i for i in ids if i.startswith("gptq_identity_3")), ids[0])


def _curves(results) -> None:
    value = st.radio("Show", ["perplexity", "KL from the reference"], horizontal=True,
                     key="m_value")
    chart(model_curve_figure(results, "ppl" if value == "perplexity" else "kl",
                             highlight=_chosen(results) if results.points else None),
          key="m_curve")
    ref = results.reference or {}
    st.caption(
        f"Reference: {model_label(results)}, perplexity {ref.get('ppl', float('nan')):.2f} on "
        f"{ref.get('eval_tokens', 0):,} tokens. Only the decoder blocks' linear layers are "
        "quantized; embeddings, norms and the LM head stay as loaded. Bits per weight include "
        "side information; rtn and gptq count log₂ of their levels, gptq-ec and watersic the "
        f"entropy of each column's codes. Text: {results.spans_text()}.")


def _inside(results) -> None:
    st.subheader("Inside one point: from layer theory to model outcome")
    ids = [p["id"] for p in results.points]
    labels = {p["id"]: _point_label(p) for p in results.points}
    point = st.selectbox("Point", ids, index=ids.index(_chosen(results)),
                         format_func=labels.get, key="m_point")
    try:
        layers = _layers(str(results.path), point)
    except WfvizError as exc:
        show_error(exc)
        return
    cols = st.columns(3)
    for col, value in zip(cols, LAYER_VALUES, strict=True):
        chart(layer_heatmap_figure(layers, value, title=LAYER_VALUES[value][0]),
              key=f"m_heat_{value}", container=col)
    summary = pd.DataFrame(kind_summary(layers)).rename(columns={
        "rate": "bits/weight", "relative_distortion": "mean relative distortion",
        "predicted_gap_bits": "predicted GPTQ gap (bits)"})
    st.dataframe(summary, hide_index=True, width="stretch")
    st.caption("Relative distortion is tr(EΣEᵀ)/tr(WΣWᵀ) against the Σ_X the layer was "
               "quantized with. The predicted gap is the high-rate bits per weight GPTQ needs "
               "above WaterSIC on that layer (½log₂ AM/GM of GPTQ's d_j in the rotated basis): "
               "where it is large, a rotation or WaterSIC helps most.")


def _request_form() -> PointRequest:
    c1, c2, c3, c4 = st.columns(4)
    method = c1.selectbox("Method", METHODS, key="m_method")
    rotation = c2.selectbox("Rotation", ["identity", "hadamard"], key="m_rotation",
                            format_func=ROTATION_NAMES.get)
    whole = method in WHOLE_BITS
    rate = c3.number_input("Bits per weight" + (" (whole bits)" if whole else ""),
                           min_value=1.0, max_value=8.0, value=3.0, step=1.0 if whole else 0.5,
                           key="m_rate")
    calibration = c4.selectbox("Calibration", ["one-shot", "sequential"], key="m_cal")
    t1, t2, t3 = st.columns([1, 1, 2])
    calib = t1.number_input("Calibration tokens", 2048, 131072, 32768, 2048, key="m_ctok")
    evals = t2.number_input("Evaluation tokens", 2048, 131072, 16384, 2048, key="m_etok")
    text = t3.text_input("Text file (WikiText-2 wiki.test.raw)",
                         value=str(DEFAULT_TEXT) if DEFAULT_TEXT.is_file() else "", key="m_text")
    return PointRequest(method, rotation, float(rate), calibration, int(calib), int(evals),
                        text=text.strip() or None)


def _show_finished(request: PointRequest, results) -> None:
    row = results.point(request.point_id)
    ref = results.reference or {}
    c1, c2, c3 = st.columns(3)
    c1.metric("Perplexity", f"{row['ppl']:.2f}", f"{row['ppl'] - ref.get('ppl', 0):+.2f} vs "
              "reference", delta_color="inverse")
    c2.metric("KL (nats/token)", f"{row['kl']:.4f}")
    c3.metric(f"Bits/weight ({metric_name(row['rate_metric'])})", f"{row['rate']:.3f}")
    st.caption(f"Cached in {results.path}; every session that asks for this configuration "
               f"gets it from there. Text: {results.spans_text()}.")


def _run_section() -> None:
    st.subheader("Run this point")
    reason = model_unavailable_reason()
    if reason is not None:
        st.info(f"Runs need the model on this machine. {reason}", icon=":material/info:")
        return
    request = _request_form()
    for req, run in active_points():
        if req != request:
            st.caption(f":material/hourglass_top: Running on this server: {req.point_id} "
                       f"({run.status().fraction:.0%}).")
    try:
        done = finished_point(request)
    except WfvizError as exc:
        show_error(exc)
        return
    run = running_point(request)
    problem = model_unavailable_reason(request)
    if problem:
        st.error(problem, icon=":material/error:")
    if done is None and run is None:
        st.caption("A point quantizes 210 linear layers and evaluates the model: minutes on a "
                   "CPU. It keeps running if you leave the page or close the tab; come back "
                   "with the same settings to follow it or see its result.")
        if st.button("Run this point", type="primary", disabled=bool(problem), key="m_run"):
            try:
                run = start_point(request)
            except WfvizError as exc:
                show_error(exc)
                return
    if run is not None:
        follow_job(run, label=request.point_id, cancel_key="m_cancel")
        done = finished_point(request)
    if done is not None:
        _show_finished(request, done)


results = _shipped()
if results is None:
    st.info("No whole-model results are installed: the shipped bundle's `model_grid` folder is "
            "missing. Produce one with `wfviz quantize-model … --out DIR`.")
else:
    st.caption(f"{model_label(results)}: every nn.Linear of the decoder blocks quantized at "
               "once, then the perplexity and the KL divergence from the reference model, "
               "measured on evaluation text that never overlaps the calibration text.")
    if not results.points:
        st.info("The installed results hold only the reference model; no quantized points yet.")
        st.stop()
    _curves(results)
    with st.expander("All points as a table"):
        _results_table(results)
    _inside(results)
allocation_section(results)
_run_section()
