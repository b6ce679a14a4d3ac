"""Waterfilling page: reverse waterfilling on the eigenvalues, then the same idea on the
Cholesky diagonal (WaterSIC) against GPTQ's equal rate per column."""

import numpy as np
import streamlit as st

from pages._ui import (
    RATE_AXIS,
    ROTATION_NAMES,
    chart,
    current_covariance,
    d_for,
    dr_curve_for,
    ensure_frame,
    haar_gap_for,
    haar_text,
    rotation_availability,
    show_error,
    source_caption,
)
from wfviz.covariance import Covariance
from wfviz.errors import WfvizError
from wfviz.plots import (
    MAX_BARS,
    cholesky_figure,
    column_rates_figure,
    dr_curve_figure,
    rates_figure,
    vessel_figure,
)
from wfviz.theory import WATERSIC_GAP_BITS, gptq_gap_bits
from wfviz.waterfilling import reverse_waterfill

# Choices of D / mean(σ²λ): 1e-5 … 1 in tenths of a decade (no docstring: Streamlit's magic
# would print a bare string in a page script).
REL_DISTORTIONS = [float(f"{10.0 ** (e / 10):.3g}") for e in range(-50, 1)]
HAAR_SLOW_N = 4096

ensure_frame("pages/waterfilling.py")
st.title("Reverse waterfilling")
cov = current_covariance()
if cov is None:
    st.stop()
source_caption(cov)

st.markdown(
    "Rotate the weights into the eigenbasis of Σ_X: the per-row error becomes n independent "
    "Gaussian coordinates of variances σ²λ_i. The best code under a total-rate budget fills the "
    "vessel of sorted σ²λ_i with water up to a level θ: each coordinate keeps the distortion "
    "D_i = min(θ, σ²λ_i) and spends bits only on what sticks out above the water. "
    "Here σ² = 1 (the weights' variance only rescales D).")
st.latex(r"D_i = \min(\theta, \sigma^2\lambda_i),\quad "
         r"R_i = \max\!\Big(0, \tfrac12\log_2\frac{\sigma^2\lambda_i}{\theta}\Big),\quad "
         r"R = \tfrac1n\sum_i R_i,\quad D = \tfrac1n\sum_i D_i")


def _operating_point(cov: Covariance):
    """Read the R-or-D control and solve the waterfilling for it."""
    mode = st.radio("Set", ["rate R", "distortion D"], key="wf_mode", horizontal=True,
                    help="Fix the bit budget R, or the distortion D you accept.")
    lam = cov.eigenvalues
    if mode == "rate R":
        rate = st.slider("R (bits per coordinate)", 0.0, 8.0, 1.0, 0.05, key="wf_rate")
        return reverse_waterfill(lam, rate=rate)
    rel = st.select_slider("D / mean(σ²λ) (relative distortion)", REL_DISTORTIONS, value=0.01,
                           key="wf_rel_d", format_func=lambda v: f"{v:.3g}")
    return reverse_waterfill(lam, distortion=rel * float(np.mean(lam)))


def _vessel(cov: Covariance, result) -> None:
    zero = int(np.count_nonzero(result.rates == 0))
    cols = st.columns(4)
    cols[0].metric("water level θ", f"{result.theta:.4g}")
    cols[1].metric("rate R", f"{result.rate:.3f} bits")
    mean_var = max(float(np.mean(cov.eigenvalues)), 1e-300)  # all-zero Σ: avoid 0/0
    cols[2].metric("distortion D", f"{result.distortion:.4g}",
                   help=f"relative: {result.distortion / mean_var:.3g}")
    cols[3].metric("zero-rate coordinates", f"{zero:,} of {cov.n:,}",
                   help="Coordinates below the water: σ²λ_i ≤ θ, they get no bits at all.")
    log_y = st.toggle("log scale", value=True, key="wf_log",
                      help="The spectrum spans decades; the linear scale shows the classic shape.")
    chart(vessel_figure(cov.eigenvalues, float(result.theta), log_y=log_y), "wf_vessel")
    drawn = ("one bar per coordinate" if cov.n <= MAX_BARS else
             f"n = {cov.n:,} > {MAX_BARS}: step areas over at most 2,000 evenly spaced "
             "coordinates instead of bars")
    st.caption(f"Orange: σ²λ_i; blue: the water D_i; dashed: θ ({drawn}). "
               "Coordinates whose bar is all blue get zero rate.")
    left, right = st.columns(2)
    chart(rates_figure(result.rates, RATE_AXIS), "wf_rates", left)
    rates, dist, highrate = dr_curve_for(cov)
    high = highrate if np.all(highrate > 0) else None
    chart(dr_curve_figure(rates, dist, (float(result.rate), float(result.distortion)),
                          RATE_AXIS, high), "wf_curve", right)
    right.caption("Dotted: the high-rate formula σ² det(Σ_X)^(1/n) 2^(−2R), exact once "
                  "θ ≤ σ²λ_min.")


def _cholesky_panel(cov: Covariance, rate: float) -> None:
    st.subheader("The same budget in the Cholesky (SIC) domain: WaterSIC vs GPTQ")
    st.markdown(
        "GPTQ and WaterSIC quantize column by column with error feedback (successive "
        "interference cancellation). Column j then behaves like a scalar source of variance "
        "σ²d_j, the innovation variance Var(X_j | X_<j). **WaterSIC** waterfills over d; "
        "**GPTQ** gives every column the same rate. The basis (rotation or column order) "
        "changes d but not Π d_j = det Σ_X, so it matters only to GPTQ. The chart shows "
        "WaterSIC's d_j = Var(X_j | X_<j) (columns decided last to first); the predicted gap "
        "uses the d GPTQ sees deciding first to last, Var(X_j | X_>j): the same product, "
        "another AM.")
    # Two lines: one would not fit a projector's width in presenter mode.
    st.latex(r"\Sigma_X = LL^\top,\ d_j = L_{jj}^2,\qquad "
             r"R^{\mathrm{WaterSIC}}_j \approx R + \tfrac12\log_2\frac{d_j}{\mathrm{GM}(d)}")
    st.latex(r"\Delta R_{\mathrm{GPTQ-WaterSIC}} = \tfrac12\log_2\frac{\mathrm{AM}(d)}"
             r"{\mathrm{GM}(d)}")
    available = rotation_availability(cov)
    usable = [r for r, why in available.items() if why is None]
    # Start on a basis that costs no factorisation for eigenvalues-only sources (Haar costs two
    # n × n QR factorisations: minutes at n = 14336).
    first = "identity" if "identity" in usable else "eigenbasis"
    rotation = st.selectbox("basis / column order", usable, key="wf_rotation",
                            index=usable.index(first),
                            format_func=lambda r: ROTATION_NAMES.get(r, r))
    if rotation == "haar" and cov.n > HAAR_SLOW_N:
        st.caption(f"A Haar rotation at n = {cov.n:,} takes a while the first time (two "
                   "n × n QR factorisations); it is cached afterwards.")
    off = [ROTATION_NAMES.get(r, r) for r, why in available.items() if why]
    if off:
        st.caption(f"Unavailable for this source: {', '.join(off)} (they need the full Σ_X "
                   "matrix; this source has only its eigenvalues).")
    try:
        d = d_for(cov, rotation)
    except WfvizError as exc:
        show_error(exc)
        return
    watersic = reverse_waterfill(d, rate=rate)
    # GPTQ decides the columns first to last, so its d is Var(X_j | X_>j): same GM, other AM
    gap = gptq_gap_bits(d_for(cov, rotation, order="gptq"))
    cols = st.columns(3)
    if rotation == "haar":  # one random rotation is one draw: show the spread over several
        haar = haar_gap_for(cov)
        cols[0].metric("predicted gap GPTQ − WaterSIC", f"{haar_text(haar)} bits",
                       help=f"Mean ± sd over {haar['seeds']} random rotations (min "
                            f"{haar['min']:.3f}, max {haar['max']:.3f}); the charts show one "
                            f"of them (seed 0), whose gap is {gap:.3f} bits.")
        cols[1].metric("AM(d)/GM(d)", f"{2 ** (2 * haar['mean']):.4g}",
                       help="At the mean gap.")
    else:
        cols[0].metric("predicted gap GPTQ − WaterSIC", f"{gap:.3f} bits",
                       help="High-rate gap of entropy-coded GPTQ over WaterSIC for this basis.")
        cols[1].metric("AM(d)/GM(d)", f"{2 ** (2 * gap):.4g}")
    cols[2].metric("WaterSIC above the limit", f"{WATERSIC_GAP_BITS:.4f} bits",
                   help="½ log2(2πe/12): the scalar quantizer's space-filling loss, any basis.")
    left, right = st.columns(2)
    chart(cholesky_figure(d, ROTATION_NAMES.get(rotation, rotation)), "wf_d", left)
    chart(column_rates_figure(watersic.rates, rate, RATE_AXIS), "wf_col_rates", right)
    zero = int(np.count_nonzero(watersic.rates == 0))
    right.caption(f"WaterSIC rates: exact waterfilling over d at the same mean rate "
                  f"R = {rate:.3f}; {zero:,} columns get zero rate. GPTQ: R on every column.")


@st.fragment
def waterfilling_panel(cov: Covariance) -> None:
    """Slider and figures; a slider move reruns only this fragment, not the source load."""
    result = _operating_point(cov)
    _vessel(cov, result)
    _cholesky_panel(cov, float(result.rate))


waterfilling_panel(cov)
