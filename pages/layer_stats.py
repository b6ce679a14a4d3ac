"""Layer statistics page: every layer of a bundle (or a set of uploaded Σ_X files) at a glance,
the predicted GPTQ-vs-WaterSIC gap per basis, and the paper's by-layer-type claim next to it."""

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._figures import OUTLIER_RATIO, top_channels
from pages._ui import (
    ensure_frame,
    installed_bundles,
    load_upload,
    select_source,
    show_error,
    stats_for,
)
from wfviz.errors import WfvizError
from wfviz.theory import gptq_gap_bits, log2_am_gm

# The paper's figure: GPTQ after a random rotation is within 0.1 bit of WaterSIC (Llama-3-8B).
CLAIM_BITS = 0.1
CLAIM = ("Ordentlich & Polyanskiy, *High-Rate Quantized Matrix Multiplication II*: for "
         "Llama-3-8B, GPTQ with a random rotation is within 0.1 bit of WaterSIC, depending on "
         "layer type (predicted high-rate gap ½ log2(AM(d)/GM(d)) ≤ 0.1 bit).")
GAP_COLUMNS = {"identity": "gap identity", "hadamard": "gap Hadamard", "act_order": "gap act-order",
               "haar": "gap Haar"}
_FMT3 = st.column_config.NumberColumn(format="%.3f")
_YES_NO = {True: "yes", False: "no"}

ensure_frame("pages/layer_stats.py")
st.title("Layer statistics")
st.caption("Σ_X = E[xxᵀ] per layer input, uncentred; gaps are the predicted high-rate bits per "
           "weight that entropy-coded GPTQ needs above WaterSIC (theory, not a measurement).")


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _warnings(lam: np.ndarray, diag: np.ndarray | None, n: int, tokens: int | None,
              notes: list) -> str:
    out = []
    if tokens is not None and tokens < n:
        out.append(f"only {tokens} tokens < n: Σ_X is singular")
    elif tokens is not None and tokens < 4 * n:
        out.append(f"{tokens / n:.1f} tokens per dimension: small eigenvalues are noisy")
    if not np.all(np.isfinite(lam)) or (diag is not None and not np.all(np.isfinite(diag))):
        out.append("NaN/inf values")
    if np.any(lam < 0) or any("negative" in note for note in notes):
        out.append("negative eigenvalues (clipped)")
    if diag is not None and np.any(diag == 0):
        out.append(f"{int(np.sum(diag == 0))} all-zero channels")
    if any("damping" in note for note in notes):
        out.append("Cholesky needed damping")
    return "; ".join(out)


def _row(lam: np.ndarray, diag: np.ndarray | None, gaps: dict, tokens, notes: list) -> dict:
    n = lam.size
    lam_min = float(lam.min())
    dead = None if diag is None else int(np.sum(diag <= 1e-3 * np.median(diag)))
    return {
        "n": n,
        "condition number": _finite_or_none(float(lam.max()) / lam_min) if lam_min > 0 else None,
        "AM/GM of λ": 2.0 ** log2_am_gm(lam),
        **{GAP_COLUMNS[k]: _finite_or_none(v) for k, v in gaps.items()},
        "dead features": dead,
        "top outlier channels": "" if diag is None else ", ".join(
            str(j) for j in top_channels(diag, 3, min_ratio=OUTLIER_RATIO)),
        "warnings": _warnings(lam, diag, n, tokens, notes),
    }


@st.cache_data(max_entries=4, show_spinner="Reading the bundle's layers…")
def _bundle_table(name: str, path: str, stamp: float) -> pd.DataFrame:
    """One row per (block, input) from the stored spectra and Cholesky diagonals.

    Reads the documented .npz keys directly and skips the eigenvectors, which only full
    layers have and no column here needs.
    """
    import json

    manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    tokens = manifest.get("tokens")
    rows = []
    for e in manifest["layers"]:
        with np.load(Path(path) / e["file"], allow_pickle=False) as z:
            lam, diag = z["eigenvalues"], z["diagonal"]
            # GPTQ's own order (dg_*, bundle format 2) when stored, else WaterSIC's (d_*)
            keys = {r: f"dg_{r}" if f"dg_{r}" in z.files else f"d_{r}"
                    for r in ("identity", "hadamard", "act_order")}
            gaps = {r: gptq_gap_bits(z[k]) for r, k in keys.items() if k in z.files}
            gptq_order = all(k.startswith("dg_") for r, k in keys.items() if k in z.files)
        rows.append({"block": e["block"], "input": e["input"], "full Σ_X": e["has_full"],
                     **_row(lam, diag, gaps, tokens, list(e.get("notes", ()))),
                     "GPTQ order": gptq_order})
    from wfviz.bundles import LAYER_INPUTS

    order = {name: k for k, name in enumerate(LAYER_INPUTS)}
    df = pd.DataFrame(rows)
    df = df.sort_values(["block", "input"], key=lambda c: c.map(order) if c.name == "input" else c)
    return df.reset_index(drop=True)


@st.cache_data(max_entries=4, show_spinner="One Haar rotation per layer…")
def _haar_gaps(name: str, stamp: float) -> dict:
    from wfviz.bundles import load_bundle
    from wfviz.report import bundle_report

    report = bundle_report(load_bundle(name), haar_seeds=1)
    return {(r["block"], r["input"]): r["haar"] for r in report["layers"]}


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


def _claim(df: pd.DataFrame, model: str) -> None:
    st.subheader("The paper's by-layer-type claim")
    st.markdown(CLAIM)
    bases = [c for c in ("gap Haar", "gap Hadamard", "gap identity") if c in df]
    summary = df.groupby("input", sort=False)[bases].agg(["mean", "max"])
    summary.columns = [f"{b.removeprefix('gap ')} {stat}" for b, stat in summary.columns]
    rotated = "gap Haar" if "gap Haar" in df else "gap Hadamard"
    basis = rotated.removeprefix("gap ")
    means = df.groupby("input", sort=False)[rotated].mean()
    worst = df.groupby("input", sort=False)[rotated].max()
    summary[f"mean ≤ {CLAIM_BITS} bit ({basis})"] = (means <= CLAIM_BITS).map(_YES_NO)
    summary[f"every block ≤ {CLAIM_BITS} bit ({basis})"] = (worst <= CLAIM_BITS).map(_YES_NO)
    st.dataframe(summary, column_config={c: _FMT3 for c in summary.columns if "≤" not in c})
    held = [i for i, ok in (means <= CLAIM_BITS).items() if ok]
    failed = [i for i, ok in (means <= CLAIM_BITS).items() if not ok]
    verdict = (f"From the measured Σ_X of **{model}**, after a {basis} rotation: the mean "
               f"predicted gap over blocks is within {CLAIM_BITS} bit for "
               f"{', '.join(held) or 'no layer type'}")
    verdict += f" but not for {', '.join(failed)}." if failed else "."
    top = df.loc[df[rotated].idxmax()]
    verdict += (f" The worst single layer is block {top['block']} {top['input']} at "
                f"{top[rotated]:.3f} bit.")
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
    try:
        df = _bundle_table(name, str(bundle.path), stamp)
    except (WfvizError, OSError, KeyError, ValueError) as exc:
        show_error(WfvizError(f"Bundle '{name}' could not be read ({exc}); regenerate it."))
        return
    if st.toggle("add Haar-rotation predictions (one random rotation per layer; slow the "
                 "first time)", key="ls_haar"):
        haar = _haar_gaps(name, stamp)
        df["gap Haar"] = [haar.get((b, i)) for b, i in zip(df["block"], df["input"], strict=True)]
    df["input"] = df["input"].astype(str)
    gptq_order = bool(df.pop("GPTQ order").all())
    st.dataframe(df, hide_index=True, key="ls_table",
                 column_config={c: _FMT3 for c in df if c.startswith("gap") or c == "AM/GM of λ"}
                 | {"condition number": st.column_config.NumberColumn(format="%.2e")})
    if gptq_order:
        st.caption("Gaps from the d GPTQ sees deciding the columns first to last, "
                   "Var(X_j | X_>j) (act-order, largest E[x_j²] first, is designed for that "
                   "order).")
    else:
        st.caption("This bundle (format 1) stores d only in WaterSIC's order, Var(X_j | X_<j), "
                   "for some layers: their gaps are not GPTQ's, which decides the columns first "
                   "to last and sees Var(X_j | X_>j) (same product, another AM; act-order's gap "
                   "reads far too large). Regenerate the bundle with 'wfviz collect'.")
    flagged = df[df["warnings"] != ""]
    if len(flagged):
        st.warning(f"{len(flagged)} layers have suspicious statistics; see the warnings column.")
    metric = st.selectbox("heatmap", [c for c in GAP_COLUMNS.values() if c in df], key="ls_heat")
    st.plotly_chart(_heatmap(df, metric), width="stretch", key="ls_heatmap")
    _claim(df, bundle.model_label)
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
            stats = stats_for(cov)
        except WfvizError as exc:
            show_error(WfvizError(f"{f.name}: {exc}"))
            continue
        lam = cov.eigenvalues
        gaps = {r: g for r, g in stats["gap_bits"].items() if r in GAP_COLUMNS}
        rows.append({"file": f.name, "sha256": hashlib.sha256(data).hexdigest()[:12],
                     **_row(lam, cov.diag, {k: (math.nan if v is None else v)
                                            for k, v in gaps.items()}, None, stats["notes"])})
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="ls_upload_table")
        st.caption("Gaps are n/a (empty) where a rotation needs a full matrix the file lacks. "
                   "Select a single file in the sidebar's Upload to open it on the other pages.")


if st.radio("layers from", ["bundle", "uploaded files"], key="ls_kind",
            horizontal=True) == "bundle":
    bundle_view()
else:
    upload_view()
