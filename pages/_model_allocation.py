"""The Model page's allocation section: a model's bit budget split over its layers.

Reads the stored allocation inputs (``<bundle>/allocation_costs.json``,
:func:`wfviz.allocation.shipped_costs`), so it works without the model installed. Widgets,
caching and layout only; the plans, figures and exports come from wfviz.
"""

import pandas as pd
import streamlit as st

from pages._ui import ROTATION_NAMES, chart, follow_job, show_error
from wfviz.errors import WfvizError

MIN_RATE, MAX_RATE = 1.0, 8.0  # as wfviz allocate: every quantizer can run 1 to 8 bits
NO_COSTS = ("No stored allocation inputs are installed (`allocation_costs.json` beside the "
            "bundle). Make them with `wfviz allocate --model … --text wiki.test.raw "
            "--calib-tokens 32768 --budget 3 --sensitivity fisher --out plan.json "
            "--save-costs <bundle>/allocation_costs.json`.")


@st.cache_data(max_entries=1, show_spinner=False)
def _costs():
    from wfviz.allocation import shipped_costs

    return shipped_costs()


@st.cache_data(max_entries=32, show_spinner=False)
def _plans(budget: float, method: str, rotation: str, sensitivity: str, cost: str):
    """The waterfilled, uniform and heuristic plans and the layers they were made from."""
    from wfviz.allocation import allocate, heuristic_plan, uniform_plan

    costs = _costs()
    curve = (method, rotation) if cost == "measured" else None
    layers = costs.layer_costs(rotation, sensitivity, curve)
    common = dict(cost=cost, method=method, model=costs.provenance.get("model"),
                  model_fingerprint=costs.provenance.get("model_fingerprint"),
                  sensitivity_name=sensitivity)
    return (allocate(layers, budget, min_rate=MIN_RATE, max_rate=MAX_RATE, **common),
            uniform_plan(layers, budget, **common), heuristic_plan(layers, budget, **common),
            layers)


def _measured(results, method: str, rotation: str, budget: float) -> pd.DataFrame | None:
    """Shipped grid points at this method, rotation and budget (uniform or planned)."""
    from wfviz.model_results import measured_near

    rows = measured_near(results, method, rotation, budget) if results is not None else []
    if not rows:
        return None
    return pd.DataFrame([{"plan": r["plan"], "bits/weight": r["rate"],
                          "measured ΔNLL (nats/token)": r["dnll"], "perplexity": r["ppl"]}
                         for r in rows])


def _widgets(costs) -> tuple:
    budget = st.slider("Budget: mean bits per weight over all quantized layers", 1.5, 6.0, 3.0,
                       0.05, key="a_budget")
    c1, c2, c3, c4 = st.columns(4)
    method = c1.selectbox("Method (cost model's constant)", ["watersic", "gptq-ec"],
                          key="a_method")
    rotation = c2.selectbox("Rotation", [r for r in ("identity", "hadamard")
                                         if r in costs.rotations],
                            key="a_rotation", format_func=ROTATION_NAMES.get)
    options = [s for s in ("none", "fisher", "noise") if s in costs.sensitivities]
    sensitivity = c3.selectbox("Sensitivity s_l", options, key="a_sens",
                               index=options.index("fisher") if "fisher" in options else 0,
                               format_func=lambda s: {"none": "none (s = 1, layer MSE)"}.get(s, s))
    measured = [c for c in costs.curves if c == (method, rotation)]
    cost = c4.selectbox("Cost D_l(R)", ["high-rate"] + (["measured"] if measured else []),
                        key="a_cost", help="measured: only where the stored inputs hold "
                                           "measured curves for this method and rotation")
    return budget, method, rotation, sensitivity, cost


def _metrics(plan, uniform, heuristic) -> None:
    # with s = 1 the loss model's sum is the layers' summed output MSE, not nats
    what = "ΔNLL" if plan.sensitivity != "none" else "Σ m·D (s = 1)"
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Water level θ (s·D)", f"{plan.theta:.3g}")
    c2.metric(f"Predicted {what}, waterfilled", f"{plan.predicted_dnll:.4g}",
              f"{plan.predicted_dnll / uniform.predicted_dnll - 1:+.1%} vs uniform",
              delta_color="inverse")
    c3.metric(f"Predicted {what}, uniform", f"{uniform.predicted_dnll:.4g}")
    c4.metric(f"Predicted {what}, heuristic", f"{heuristic.predicted_dnll:.4g}")


def _exports(plan) -> None:
    from wfviz.allocate_cmd import plan_text

    stem = f"plan-{plan.method}-{plan.budget:.2f}b"
    c1, c2, c3 = st.columns(3)
    for col, fmt, name, mime, label in (
            (c1, "json", f"{stem}.json", "application/json", "Rate plan (JSON)"),
            (c2, "llama-cpp", f"{stem}.args", "text/plain", "llama.cpp --tensor-type args"),
            (c3, "gptqmodel", f"{stem}-gptqmodel.json", "application/json",
             "GPTQModel dynamic (JSON)")):
        col.download_button(label, plan_text(plan, fmt), file_name=name, mime=mime,
                            key=f"a_dl_{fmt}", on_click="ignore", icon=":material/download:")


def _run_plan(plan, rotation: str, costs) -> None:
    import wfviz.model_jobs as jobs

    st.markdown("**Run this plan** on the model: its perplexity is then measured, not predicted")
    reason = jobs.model_unavailable_reason()
    if reason is not None:
        st.info(f"Runs need the model on this machine. {reason}", icon=":material/info:")
        return
    calib = int((costs.provenance.get("calibration") or {}).get("tokens") or 32768)
    t1, t2 = st.columns([1, 3])
    evals = t1.number_input("Evaluation tokens", 2, 131072, 16384, 2048, key="a_etok")
    default = jobs.DEFAULT_TEXT
    text = t2.text_input("Text file (WikiText-2 wiki.test.raw)",
                         value=str(default) if default.is_file() else "", key="a_text")
    request = jobs.PointRequest(plan.method, rotation, plan.budget, calib_tokens=calib,
                                eval_tokens=int(evals), text=text.strip() or None,
                                plan=plan.to_json())
    problem = jobs.model_unavailable_reason(request)
    if problem:
        st.error(problem, icon=":material/error:")
    try:
        done = jobs.finished_point(request)
    except WfvizError as exc:
        show_error(exc)
        return
    run = jobs.running_point(request)
    if done is None and run is None:
        st.caption(f"Quantizes every layer at its planned rate ({plan.method}, "
                   f"{ROTATION_NAMES.get(rotation, rotation)}, calibration tokens 0–{calib:,} "
                   "as the stored inputs) and evaluates the model: minutes on a CPU. It keeps "
                   "running if you leave the page.")
        if st.button("Run this plan", type="primary", disabled=bool(problem), key="a_run"):
            try:
                run = jobs.start_point(request)
            except WfvizError as exc:
                show_error(exc)
                return
    if run is not None:
        follow_job(run, label=f"the plan ({request.point_id})", cancel_key="a_cancel")
        done = jobs.finished_point(request)
    if done is not None:
        row, ref = done.point(request.point_id), done.reference or {}
        c1, c2, c3 = st.columns(3)
        c1.metric("Measured perplexity (this plan)", f"{row['ppl']:.2f}",
                  f"{row['ppl'] - ref.get('ppl', 0):+.2f} vs reference", delta_color="inverse")
        c2.metric("Measured ΔNLL (nats/token)", f"{row['nll'] - ref.get('nll', 0):.4f}")
        c3.metric("Measured bits/weight", f"{row['rate']:.3f}")
        st.caption(f"Cached in {done.path}. Text: {done.spans_text()}.")


def allocation_section(results) -> None:
    """The section: widgets, the three figures, predicted and measured ΔNLL, exports, a run.

    ``results`` is the shipped grid the page has already read (or None): its points at the
    budget are shown as measured beside the predictions."""
    from wfviz.plots import layer_vessel_figure, plan_bars_figure, plan_heatmap_figure

    st.subheader("How many bits should each layer get?")
    st.caption("Reverse waterfilling across layers: with ΔNLL ≈ Σ s_l·a_l n_l·κ_l 2^(−2R_l), a "
               "layer gets R_l = ½log₂(s_l κ_l/θ) bits (kept within 1–8), θ chosen so the mean "
               "is the budget. κ_l = (2πe/12)·σ²_W·GM(d) for WaterSIC, the AM for GPTQ-EC.")
    try:
        costs = _costs()
    except WfvizError as exc:
        show_error(exc)
        return
    if costs is None:
        st.info(NO_COSTS, icon=":material/info:")
        return
    budget, method, rotation, sensitivity, cost = _widgets(costs)
    try:
        plan, uniform, heuristic, layers = _plans(float(budget), method, rotation, sensitivity,
                                                  cost)
    except WfvizError as exc:
        show_error(exc)
        return
    _metrics(plan, uniform, heuristic)
    measured = _measured(results, method, rotation, float(budget))
    if measured is not None:
        st.markdown("**Measured** on the shipped grid (same method and rotation; ΔNLL is the "
                    "quantized model's NLL minus the reference's):")
        st.dataframe(measured, hide_index=True, width="stretch", column_config={
            "bits/weight": st.column_config.NumberColumn(format="%.3f"),
            "measured ΔNLL (nats/token)": st.column_config.NumberColumn(format="%.4f"),
            "perplexity": st.column_config.NumberColumn(format="%.2f")})
    else:
        st.caption("No measured point of the shipped grid at this method, rotation and budget; "
                   "the numbers above are predictions of the loss model.")
    chart(layer_vessel_figure(plan, layers), key="a_vessel")
    c1, c2 = st.columns([3, 2])
    chart(plan_bars_figure(plan, layers), key="a_bars", container=c1)
    chart(plan_heatmap_figure(plan, layers), key="a_heat", container=c2)
    prov = costs.provenance
    sens = (prov.get("sensitivities") or {}).get(sensitivity)
    st.caption(f"Stored inputs: {prov.get('model', 'model')}, calibration tokens "
               f"{_span(prov)}; sensitivity {sensitivity}"
               + (f" from {sens['span']}" if isinstance(sens, dict) and "span" in sens else "")
               + ". Predicted ΔNLL is nats per token under the loss model (with s = 1 it is "
               "the summed layer MSE, no loss unit); bits are the planned entropy per weight.")
    _exports(plan)
    _run_plan(plan, rotation, costs)


def _span(prov: dict) -> str:
    cal = prov.get("calibration") or {}
    if "start" not in cal:
        return "not recorded"
    name = (cal.get("text") or {}).get("name", "")
    return f"{cal['start']:,}–{cal['start'] + cal['tokens']:,} of {name}".strip()
