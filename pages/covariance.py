"""Covariance page: what the selected Σ_X looks like and what it predicts for GPTQ vs WaterSIC."""

import math

import numpy as np
import pandas as pd
import streamlit as st

from pages._ui import (
    ROTATION_NAMES,
    chart,
    current_covariance,
    ensure_frame,
    requires_full_matrix,
    show_error,
    source_caption,
    spread_text,
    stats_for,
)
from wfviz.errors import WfvizError
from wfviz.plots import (
    OUTLIER_RATIO,
    diagonal_figure,
    heatmap_figure,
    spectrum_figure,
    top_channels,
)

ensure_frame("pages/covariance.py")
st.title("Covariance Σ_X")
cov = current_covariance()
if cov is None:
    st.stop()
source_caption(cov)

try:
    stats = stats_for(cov)
except WfvizError as exc:
    show_error(exc)
    st.stop()


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return "∞" if not math.isfinite(x) else f"{x:.{digits}g}"


cols = st.columns(5)
cols[0].metric("n (input features)", f"{stats['n']:,}")
cols[1].metric("condition number", _fmt(stats["condition_number"]),
               help="λ_max/λ_min; ∞ when Σ_X is singular (λ_min = 0): GPTQ then needs damping.")
cols[2].metric("effective rank", _fmt(stats["effective_rank"], 4),
               help="exp of the entropy of λ/Σλ: n for a flat spectrum, 1 for rank one.")
cols[3].metric("dead features", _fmt(stats["dead_features"]),
               help="Channels whose E[x_j²] is 0 or below 1e-3 × the median: they are taken "
                    "out before any rotation, and their weights are not coded.")
cols[4].metric("AM/GM of λ", _fmt(stats["am_gm_eigenvalue"], 4),
               help="1 for a flat spectrum; the GPTQ-vs-WaterSIC gap in the eigenbasis is "
                    "½ log2 of it.")

st.subheader("Predicted high-rate gap: entropy-coded GPTQ vs WaterSIC")
st.markdown("GPTQ spends the same rate on every column; WaterSIC waterfills over the Cholesky "
            "diagonal d. At high rate GPTQ needs this many **more bits per weight** for the same "
            "distortion. WaterSIC itself sits 0.2546 bit above the rate-distortion limit in "
            "every basis.")
st.latex(r"\Delta R = \tfrac12 \log_2 \frac{\mathrm{AM}(d)}{\mathrm{GM}(d)},\qquad "
         r"d_j = L_{jj}^2,\ \Sigma_X = L L^\top")
why = {n.split("]", 1)[0].removeprefix("gap_bits["): n.split("]: ", 1)[-1]
       for n in stats["notes"] if n.startswith("gap_bits[")}
haar = stats.get("haar_gap")
# Haar: the mean over random rotations, never one draw, with its spread next to it.
gap_rows = [{"basis": ROTATION_NAMES.get(r, r), "predicted gap (bits per weight)": g,
             "± sd": f"± {spread_text(haar['std'])}" if r == "haar" and haar else "",
             "note": (f"mean ± sd over {haar['seeds']} random rotations (min {haar['min']:.3f}, "
                      f"max {haar['max']:.3f})" if r == "haar" and haar else why.get(r, ""))}
            for r, g in stats["gap_bits"].items()]
st.dataframe(pd.DataFrame(gap_rows), hide_index=True, key="cov_gaps",
             column_config={"predicted gap (bits per weight)": st.column_config.NumberColumn(
                 format="%.3f")})
st.caption("GPTQ decides the columns first to last, so these gaps use the d it sees, "
           "d_j = Var(X_j | X_>j): the same product as WaterSIC's Var(X_j | X_<j), another AM "
           "(act-order, largest E[x_j²] first, is designed for that order).")

left, right = st.columns(2)
with left:
    chart(spectrum_figure(cov.eigenvalues), "cov_spectrum", left)
    st.caption("A spread of many decades is what makes equal-rate quantization wasteful; "
               "reverse waterfilling gives the large directions more bits.")
with right:
    diag = cov.diag
    if diag is None:
        st.info("This source has no diagonal of Σ_X (eigenvalues only).")
    else:
        chart(diagonal_figure(diag), "cov_diagonal", right)
        top = top_channels(diag, 5, min_ratio=OUTLIER_RATIO)
        median = float(np.median(diag))
        # An all-zero (or mostly zero) diagonal has median 0: name the channels without ratios.
        listed = ", ".join(f"{j} ({diag[j] / median:.3g}× median)" if median > 0 else str(j)
                           for j in top)
        outliers = (f"Top outlier channels: {listed}." if top.size else
                    f"No channel reaches {OUTLIER_RATIO:g}× the median second moment.")
        st.caption(f"{outliers} Outlier channels dominate GPTQ's identity-basis d; rotations "
                   "spread them over all channels.")

st.subheader("The matrix")
if requires_full_matrix(cov, "The heatmap"):
    left, right = st.columns(2)
    chart(heatmap_figure(cov.matrix), "cov_heatmap", left)
    left.caption("Bright rows and columns are outlier channels: their scale dominates |Σ|.")
    chart(heatmap_figure(cov.matrix, correlation=True), "cov_corr", right)
    right.caption("The same matrix with every channel scaled to unit second moment (colour "
                  "saturates at the 99th percentile off the diagonal): what is left is the "
                  "correlation that the Cholesky (SIC) order exploits; d_j = Var(X_j | X_<j) "
                  "is small where x_j is predictable from earlier channels.")
