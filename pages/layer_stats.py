"""Layer statistics page: every layer of a bundle (or a set of uploaded Σ_X files) at a glance,
the predicted GPTQ-vs-WaterSIC gap per basis, and the paper's by-layer-type claim next to it."""

import hashlib

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._ui import (
    chart,
    ensure_frame,
    installed_bundles,
    load_upload,
    select_source,
    show_error,
)
from wfviz.errors import WfvizError
from wfviz.report import CLAIM_BITS, claim_summary, layer_row, layer_table
from wfviz.stats import HAAR_SEEDS

CLAIM = ("Ordentlich & Polyanskiy, *High-Rate Quantized Matrix Multiplication II*: for "
         "Llama-3-8B, GPTQ with a random rotation is within 0.1 bit of WaterSIC, depending on "
         "layer type (predicted high-rate gap ½ log2(AM(d)/GM(d)) ≤ 0.1 bit).")
DISPLAY = {"full": "full Σ_X", "condition_number": "condition number",
           "am_gm_eigenvalue": "AM/GM of λ", "gap_identity": "gap identity",
           "gap_hadamard": "gap Hadamard", "gap_act_order": "gap act-order", "gap_haar": "gap Haar",
           "gap_haar_std": "Haar ± sd", "dead_features": "dead features",
           "top_outliers": "top outlier channels"}
GAP_COLUMNS = [DISPLAY[k] for k in ("gap_identity", "gap_hadamard", "gap_act_order", "gap_haar")]
_FMT3 = st.column_config.NumberColumn(format="%.3f")
_YES_NO = {True: "yes", False: "no"}

ensure_frame("pages/layer_stats.py")
st.title("Layer statistics")
st.caption("Σ_X = E[xxᵀ] per layer input, uncentred; gaps are the predicted high-rate bits per "
           "weight that entropy-coded GPTQ needs above WaterSIC (theory, not a measurement).")


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows).rename(columns=DISPLAY)
    if "top outlier channels" in df:
        df["top outlier channels"] = df["top outlier channels"].map(
            lambda js: ", ".join(str(j) for j in js))
    return df


@st.cache_data(max_entries=4, show_spinner="Reading the bundle's layers…")
def _bundle_rows(name: str, stamp: float, haar_seeds: int) -> list[dict]:
    from wfviz.bundles import load_bundle

    return layer_table(load_bundle(name), haar_seeds=haar_seeds)


def _heatmap(df: pd.DataFrame, column: str) -> go.Figure:
    from wfviz.bundles import LAYER_INPUTS

    grid = df.pivot(index="input", columns="block", values=column)
    grid = grid.reindex([i for i in LAYER_INPUTS if i in grid.index])
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(dtype=float), x=grid.columns, y=grid.index,
                               colorscale="Blues", zmin=0,
                               colorbar=dict(title=dict(text="bits"))))
    fig.update_layout(title=f"Predicted GPTQ − WaterSIC gap, {column.removeprefix('gap ')} basis",
                      height=300, margin=dict(l=70, r=20, t=50, b=50))
    fig.update_xaxes(title_text="block", dtick=1 if grid.shape[1] <= 32 else None)
    fig.update_yaxes(title_text="layer input", autorange="reversed")
    return fig


def _claim(rows: list[dict], model: str) -> None:
    st.subheader("The paper's by-layer-type claim")
    st.markdown(CLAIM)
    basis = "haar" if any(r.get("gap_haar") is not None for r in rows) else "hadamard"
    summary = claim_summary(rows, basis=basis)
    label = DISPLAY[f"gap_{basis}"].removeprefix("gap ")
    st.dataframe(pd.DataFrame([
        {"input": k, f"{label} mean": v["mean"], f"{label} max": v["max"],
         f"mean ≤ {CLAIM_BITS} bit": _YES_NO[v["mean_within"]],
         f"every block ≤ {CLAIM_BITS} bit": _YES_NO[v["all_within"]]}
        for k, v in summary["by_type"].items()]), hide_index=True, key="ls_claim",
        column_config={f"{label} mean": _FMT3, f"{label} max": _FMT3})
    held, failed, worst = summary["held"], summary["failed"], summary["worst"]
    verdict = (f"From the measured Σ_X of **{model}**, after a {label} rotation: the mean "
               f"predicted gap over blocks is within {CLAIM_BITS} bit for "
               f"{', '.join(held) or 'no layer type'}")
    verdict += f" but not for {', '.join(failed)}." if failed else "."
    verdict += (f" The worst single layer is block {worst['block']} {worst['input']} at "
                f"{worst['gap']:.3f} bit.")
    st.markdown(verdict + " The paper's numbers are for Llama-3-8B, which is not shipped here.")


def _send_to_pages(specs: dict) -> None:
    st.subheader("Open a layer on the other pages")
    spec = st.selectbox("layer", list(specs), format_func=specs.get, key="ls_layer")
    cols = st.columns(2)
    if cols[0].button("Open in Covariance", key="ls_open_cov"):
        select_source(spec, page="pages/covariance.py")
    if cols[1].button("Open in Waterfilling", key="ls_open_wf"):
        select_source(spec, page="pages/waterfilling.py")


def bundle_view() -> None:
    from wfviz.bundles import LAYER_INPUT_NAMES

    bundles = {b.name: b for b in installed_bundles()}
    if not bundles:
        st.info("No bundle is installed; upload a set of Σ_X files instead.")
        return
    name = st.selectbox("bundle", list(bundles), key="ls_bundle")
    bundle = bundles[name]
    stamp = (bundle.path / "manifest.json").stat().st_mtime
    tokens = bundle.manifest.get("tokens")
    st.caption(f"{bundle.model_label} · {tokens} tokens · {len(bundle.layers)} layer inputs")
    haar = st.toggle(f"add Haar-rotation predictions (mean ± sd over {HAAR_SEEDS} random "
                     "rotations per layer; slow the first time)", key="ls_haar")
    try:
        rows = _bundle_rows(name, stamp, HAAR_SEEDS if haar else 0)
    except (WfvizError, OSError, KeyError, ValueError) as exc:
        show_error(WfvizError(f"Bundle '{name}' could not be read ({exc}); regenerate it."))
        return
    df = _frame(rows)
    df["input"] = df["input"].astype(str)
    gptq_order = bool(df.pop("gptq_order").all())
    st.dataframe(df, hide_index=True, key="ls_table",
                 column_config={c: _FMT3 for c in df if c.startswith("gap")
                                or c in ("AM/GM of λ", "Haar ± sd")}
                 | {"condition number": st.column_config.NumberColumn(format="%.2e")})
    if gptq_order:
        st.caption("Gaps from the d GPTQ sees deciding the columns first to last, "
                   "Var(X_j | X_>j), on the live features (act-order, largest E[x_j²] first, "
                   "is designed for that order).")
    else:
        st.caption("This bundle (format 1) stores d only in WaterSIC's order, Var(X_j | X_<j), "
                   "for some layers: their gaps are not GPTQ's, which decides the columns first "
                   "to last and sees Var(X_j | X_>j) (same product, another AM; act-order's gap "
                   "reads far too large). Regenerate the bundle with 'wfviz collect'.")
    flagged = df[df["warnings"] != ""]
    if len(flagged):
        st.warning(f"{len(flagged)} layers have suspicious statistics; see the warnings column.")
    metric = st.selectbox("heatmap", [c for c in GAP_COLUMNS if c in df], key="ls_heat")
    chart(_heatmap(df, metric), "ls_heatmap")
    _claim(rows, bundle.model_label)
    specs = {f"bundle:{name}/{b}/{i}": f"block {b} · {LAYER_INPUT_NAMES.get(i, i)}"
             for b, i in zip(df["block"], df["input"], strict=True)}
    _send_to_pages(specs)


def upload_view() -> None:
    files = st.file_uploader("Σ_X files, one per layer", type=["npy", "npz", "pt", "pth",
                                                                "safetensors"],
                             accept_multiple_files=True, key="ls_upload")
    rows = []
    for f in files or []:
        data = f.getvalue()
        try:
            cov = load_upload(f.name, data)
        except WfvizError as exc:
            show_error(WfvizError(f"{f.name}: {exc}"))
            continue
        rows.append({"file": f.name, "sha256": hashlib.sha256(data).hexdigest()[:12],
                     **layer_row(cov, haar_seeds=HAAR_SEEDS)})
    if rows:
        st.dataframe(_frame(rows), hide_index=True, key="ls_upload_table")
        st.caption("Gaps are n/a (empty) where a rotation needs a full matrix the file lacks. "
                   "Select a single file in the sidebar's Upload to open it on the other pages.")


if st.radio("layers from", ["bundle", "uploaded files"], key="ls_kind",
            horizontal=True) == "bundle":
    bundle_view()
else:
    upload_view()
