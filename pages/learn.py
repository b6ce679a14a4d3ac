"""Learn page: a guided walkthrough for a lecture, one small instant example per step.

Every example is computed here from its sliders (n ≤ 32, no cache needed); step 6 reads the
bundled real layers. The formulas are those of docs/theory.md.
"""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages._ui import (
    ROTATION_NAMES,
    chart,
    ensure_frame,
    haar_text,
    installed_bundles,
    select_source,
)
from wfviz.bundles import LAYER_INPUT_NAMES, LLAMA3_HINT, load_bundle
from wfviz.covariance_io import validate_covariance
from wfviz.glossary import glossary_markdown
from wfviz.plots import CODED, INK, WATER, style_figure, vessel_figure
from wfviz.quantizers.watersic import sic_round
from wfviz.rates import column_entropy_bits
from wfviz.rotations import get_rotation
from wfviz.sources import synthetic
from wfviz.stats import haar_gap
from wfviz.theory import SPACE_FILLING_LOSS, WATERSIC_GAP_BITS, cholesky_diag, gptq_gap_bits
from wfviz.waterfilling import reverse_waterfill

STEP_KEY = "learn_step"
GLOSSARY_PARAM = "glossary"  # ?glossary=open (the sidebar's link) opens the glossary
GLOSSARY_TERMS = [
    "Σ_X", "d_j", "SIC", "AM/GM", "reverse waterfilling", "water level θ", "IT limit",
    "high rate", "WaterSIC", "GPTQ", "GPTQ-EC", "rotation", "Haar", "Hadamard", "eigenbasis",
    "act-order", "rate metric", "log_cardinality", "column_entropy", "pooled_entropy",
    "coded_bits", "parametric_coded", "side information", "entropy power", "dead feature",
    "damping"]  # the terms of this app's pages, in the order a newcomer meets them
# (Comments, not docstrings: Streamlit's magic would print a bare string in a page script.)
SIC_ROWS = 512  # rows of the small weight matrix quantized in step 3
EIGEN_ANGLE = 35  # direction of the loud eigenvector u₁ in step 1, degrees (not an axis)


def _spectrum(n: int, decay: float) -> np.ndarray:
    return np.arange(1, n + 1, dtype=float) ** (-decay)


def _ar1(n: int, rho: float) -> np.ndarray:
    return synthetic("ar1", n, rho=rho).matrix




def _bars(values, name: str, title: str, y: str, *, log_y: bool = True, color=None,
          height: int = 360) -> go.Figure:
    x = np.arange(len(values))
    fig = go.Figure(go.Bar(x=x, y=values, name=name, marker_color=color))
    fig = style_figure(fig, title, "column j", y, log_y=log_y, height=height)
    return fig.update_xaxes(dtick=1 if len(values) <= 16 else 4)


# --------------------------------------------------------------------------- 1 · weighted MSE
def step_wmse():
    st.markdown(
        "A layer computes y = W x. Quantizing W to Ŵ damages the output by E‖(W−Ŵ)x‖², which "
        "weighs the weight error by **Σ_X = E[xxᵀ]**: in the eigen-directions u_i of Σ_X an "
        "error costs λ_i per unit². Errors along directions the inputs use a lot are expensive; "
        "along quiet directions they are almost free, so plain MSE on the weights (Σ_X = I) "
        "is the wrong target. Turn the error vector e (one row of W − Ŵ, ‖e‖ = 1) below.")
    st.latex(r"D = \frac{1}{a n}\operatorname{tr}\big((W-\hat W)\,\Sigma_X\,(W-\hat W)^\top\big)"
             r" = \frac{1}{a n}\sum_{\text{rows } r}\ \sum_i \lambda_i\,(u_i^\top e_r)^2")
    c1, c2 = st.columns(2)
    angle = c1.slider("direction of the error e (degrees)", 0, 180, 80, key="learn_angle")
    ratio = c2.slider("λ₁ / λ₂ of the 2×2 Σ_X", 1.0, 100.0, 20.0, key="learn_ratio")
    lam = np.array([ratio, 1.0])
    phi = np.deg2rad(EIGEN_ANGLE)  # eigen-directions u₁, u₂ are the columns of `basis`
    basis = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
    sigma = basis @ np.diag(lam) @ basis.T
    thetas = np.deg2rad(np.arange(181))
    dirs = np.stack([np.cos(thetas), np.sin(thetas)])
    damage = np.einsum("in,ij,jn->n", dirs, sigma, dirs)
    e = dirs[:, angle]
    mine = float(damage[angle])

    plane = go.Figure()
    circle = np.linspace(0, 2 * np.pi, 181)
    plane.add_trace(go.Scatter(x=np.cos(circle), y=np.sin(circle), mode="lines",
                               name="‖e‖ = 1: the same plain MSE", line=dict(color="#9aa5b1")))
    # {v : vᵀΣv = damage of e}: the errors exactly as harmful as yours.
    ell = basis @ (np.sqrt(mine / lam)[:, None] * np.stack([np.cos(circle), np.sin(circle)]))
    plane.add_trace(go.Scatter(x=ell[0], y=ell[1], mode="lines", name="errors as harmful as e",
                               line=dict(color=CODED, width=2)))
    for i, (label, dash) in enumerate((("u₁ (loud, λ₁)", "solid"), ("u₂ (quiet, λ₂)", "dot"))):
        u = basis[:, i] * 3
        plane.add_trace(go.Scatter(x=[-u[0], u[0]], y=[-u[1], u[1]], mode="lines", name=label,
                                   line=dict(color=INK, width=1, dash=dash)))
    plane.add_trace(go.Scatter(x=[0, e[0]], y=[0, e[1]], mode="lines+markers", name="your e",
                               line=dict(color=WATER, width=4), marker=dict(size=[0, 12])))
    span = 1.2 * max(1.0, float(np.sqrt(mine / lam.min())))
    plane.update_xaxes(range=[-span, span], zeroline=False)
    plane.update_yaxes(range=[-span, span], scaleanchor="x", zeroline=False)
    style_figure(plane, "The error plane", "e₁", "e₂", height=440)
    curve = style_figure(go.Figure(go.Scatter(x=np.arange(181), y=damage, mode="lines",
                                              name="eᵀΣ_X e for ‖e‖ = 1",
                                              line=dict(color=CODED))),
                         "Same error size, different damage", "direction of e (degrees)",
                         "damage eᵀ Σ_X e", height=440)
    curve.add_trace(go.Scatter(x=[angle], y=[mine], mode="markers", name="your e",
                               marker=dict(size=14, color=WATER)))
    left, right = st.columns(2)
    chart(plane, "learn_fig_plane", left)
    chart(curve, "learn_fig_wmse", right)
    c1, c2, c3 = st.columns(3)
    c1.metric("damage eᵀΣe of your error", f"{mine:.3g}")
    c2.metric("range over directions (λ₂ … λ₁)", f"{lam.min():.3g} … {lam.max():.3g}")
    c3.metric("error allowed along u₂ vs u₁, same damage",
              f"{np.sqrt(lam.max() / lam.min()):.3g}×")
    st.caption("The orange ellipse holds every error exactly as harmful as yours: it is long "
               "along the quiet direction, √(λ₁/λ₂) times longer than along the loud one. The "
               "next steps turn this into a bit allocation.")


# --------------------------------------------------------------------------- 2 · waterfilling
def step_waterfilling():
    st.markdown(
        "In the eigenbasis of Σ_X the rows of W become independent Gaussians of variances "
        "σ²λ_i, and the damage is plain MSE again. The best code for a budget of R bits per "
        "coordinate pours water to a level θ: each coordinate keeps the distortion "
        "min(θ, σ²λ_i), and only what sticks out above the water costs bits. Coordinates under "
        "the water get **zero** bits; the others get ½·log2 of how far they stick out.")
    st.latex(r"R_i = \max\Big(0, \tfrac12\log_2\frac{\sigma^2\lambda_i}{\theta}\Big),\qquad "
             r"D_i = \min(\theta, \sigma^2\lambda_i),\qquad R = \tfrac1n\textstyle\sum_i R_i")
    c1, c2 = st.columns(2)
    decay = c1.slider("spectrum decay: λ_i = i^(−α), α", 0.0, 3.0, 1.5, 0.1, key="learn_decay")
    rate = c2.slider("rate R (bits per coordinate)", 0.05, 4.0, 0.5, 0.05, key="learn_rate")
    lam = _spectrum(24, decay)
    sol = reverse_waterfill(lam, rate=rate)
    theta = float(sol.theta)
    left, right = st.columns([3, 2])
    chart(vessel_figure(lam, theta), "learn_vessel", left)
    rates = _bars(sol.rates, "R_i", "Bits per coordinate R_i", "R_i (bits)", log_y=False,
                  color=CODED, height=420)
    rates.update_xaxes(title_text="coordinate i (largest λ first)",
                       tickvals=np.arange(0, 24, 4), ticktext=[str(k + 1) for k in range(0, 24, 4)])
    chart(rates, "learn_fig_rates", right)
    gm = float(np.exp(np.mean(np.log(lam))))
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("water level θ", f"{theta:.3g}")
    c2.metric("coordinates with zero rate", int(np.sum(sol.rates == 0)))
    c3.metric("distortion D", f"{float(sol.distortion):.3g}")
    c4.metric("D by the high-rate formula", f"{gm * 2.0 ** (-2 * rate):.3g}",
              help="σ²·GM(λ)·2^(−2R) = σ²·det(Σ_X)^(1/n)·2^(−2R): exact only once no "
                   "coordinate is under the water (θ ≤ σ²λ_min), optimistic before.")
    exact = theta <= lam.min()
    st.caption("Every coordinate is above the water, so the high-rate formula is exact: "
                "D = σ² det(Σ_X)^(1/n) 2^(−2R)." if exact else
                "Some coordinates are under the water: the high-rate formula is "
                "optimistic here; raise R until θ ≤ σ²λ_min and the two agree.")


# --------------------------------------------------------------------------- 3 · SIC
def step_sic():
    st.markdown(
        "Write Σ_X = L Lᵀ (Cholesky, L lower). Then the damage is ‖(W−Ŵ)L‖², and column j of "
        "(W−Ŵ)L involves only columns j…n−1 of the error. Quantize the columns from the last "
        "to the first and feed every decided column's error into the next targets "
        "(**successive interference cancellation**, SIC): column j's output error is then "
        "exactly its own rounding error, and its size is set by the **innovation variance** "
        "d_j = L_jj² = Var(X_j | X_<j), what X_0…X_j−1 cannot predict. GPTQ is exactly this "
        "structure (Babai's nearest plane), run first to last, i.e. on the reversed column "
        "order: its d_j is Var(X_j | X_>j). The product of the d_j never changes: it is "
        "det Σ_X, in every order.")
    st.latex(r"d_j = L_{jj}^2 = \operatorname{Var}(X_j \mid X_{<j}),\qquad "
             r"\prod_j d_j = \det \Sigma_X")
    c1, c2 = st.columns(2)
    rho = c1.slider("correlation ρ of an AR(1) input (n = 16)", 0.0, 0.99, 0.8, 0.01,
                    key="learn_rho")
    rate = c2.slider("bits per weight (sets one step c for all columns)", 1.0, 5.0, 3.0, 0.5,
                     key="learn_sic_rate")
    sigma = _ar1(16, rho)
    d = cholesky_diag(sigma)
    # High-resolution step for this mean rate: c² = 2πe·GM(d)·2^(−2R) (σ² = 1).
    c = float(np.sqrt(2 * np.pi * np.e * np.exp(np.mean(np.log(d)))) * 2.0 ** (-rate))
    W = np.random.default_rng(0).standard_normal((SIC_ROWS, 16))
    codes_fb, out_fb = sic_round(W, sigma, c, feedback=True)
    codes_plain, out_plain = sic_round(W, sigma, c, feedback=False)
    per_fb, per_plain = (out_fb**2).mean(axis=0), (out_plain**2).mean(axis=0)

    left, right = st.columns(2)
    dfig = _bars(np.diag(sigma), "Var(X_j) = Σ_jj", "What each column has to describe",
                 "variance", log_y=False, color="#9aa5b1")
    dfig.add_trace(go.Bar(x=np.arange(16), y=d, name="d_j = Var(X_j | X_<j)",
                          marker_color=WATER))
    chart(dfig, "learn_fig_sic", left)
    efig = _bars(per_plain, "without feedback", "Output error per column, same grids",
                 "error ((W−Ŵ)L)_j² per row", log_y=False, color="#9aa5b1")
    efig.add_trace(go.Bar(x=np.arange(16), y=per_fb, name="SIC (with feedback)",
                          marker_color=CODED))
    efig.add_trace(go.Scatter(x=[-0.5, 15.5], y=[c * c / 12] * 2, mode="lines",
                              name="c²/12", line=dict(color=INK, dash="dash", width=2)))
    chart(efig, "learn_fig_sic_err", right)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Σ log2 d_j", f"{np.log2(d).sum():.4f}")
    c2.metric("log2 det Σ_X", f"{np.linalg.slogdet(sigma)[1] / np.log(2):.4f}")
    c3.metric("damage without feedback ÷ with SIC", f"{per_plain.mean() / per_fb.mean():.3g}×",
              help=f"D = tr((W−Ŵ)Σ(W−Ŵ)ᵀ)/(a·n): {per_fb.mean():.3g} with SIC, "
                   f"{per_plain.mean():.3g} without.")
    c4.metric("bits per weight with SIC / without",
              f"{column_entropy_bits(codes_fb).mean():.2f} / "
              f"{column_entropy_bits(codes_plain).mean():.2f}",
              help=f"Plug-in entropy of each column's {SIC_ROWS} integer codes, averaged.")
    st.caption(f"A {SIC_ROWS} × 16 matrix W with i.i.d. N(0, 1) entries, column j rounded on the "
               "grid c/L_jj, from j = 15 down to 0. With feedback every column's output error is "
               "its own rounding error, c²/12; rounded on their own, the errors of the columns "
               "decided before (higher j) leak into the outputs of the lower ones. Same grids, "
               "about the same bits, less damage.")


# --------------------------------------------------------------------------- 4 · GPTQ vs WaterSIC
def step_gptq_vs_watersic():
    st.markdown(
        "Both quantize with SIC; they differ in the step. **GPTQ** uses the same weight-domain "
        "step Δ for every column, hence the same rate, and column j's error is ∝ d_j. "
        "**WaterSIC** uses the step c/L_jj (one step c in the whitened domain): every column's "
        "error is c²/12 and column j gets R + ½·log2(d_j/GM(d)) bits, a waterfilling over d. "
        "At the same mean rate GPTQ's distortion is AM(d)/GM(d) times WaterSIC's; WaterSIC is "
        "½·log2(2πe/12) ≈ 0.2546 bit above the limit whatever Σ_X is.")
    # Two short formulas rather than one long one: the long one was clipped on a projector.
    st.latex(r"\frac{D_{\mathrm{GPTQ}}}{D_{\mathrm{WaterSIC}}}=\frac{\operatorname{AM}(d)}"
             r"{\operatorname{GM}(d)},\qquad \text{gap}_{\text{GPTQ}-\text{WaterSIC}} = "
             r"\tfrac12\log_2\frac{\operatorname{AM}(d)}{\operatorname{GM}(d)}")
    st.latex(r"\text{gap}_{\text{WaterSIC}-\text{IT}} = \tfrac12\log_2\frac{2\pi e}{12}"
             r"\approx 0.2546\ \text{bit}")
    c1, c2 = st.columns(2)
    decay = c1.slider("spread of d: d_j = (j+1)^(−α), α", 0.0, 3.0, 1.5, 0.1,
                      key="learn_decay2")
    rate = c2.slider("mean rate R (bits per weight)", 2.0, 8.0, 4.0, 0.5, key="learn_rate2")
    d = _spectrum(16, decay)
    gm, am = float(np.exp(np.mean(np.log(d)))), float(d.mean())
    watersic = rate + 0.5 * np.log2(d / gm)  # ≥ 0 on these sliders: high-rate theory holds
    scale = SPACE_FILLING_LOSS * 2.0 ** (-2 * rate)
    left, right = st.columns(2)
    rfig = _bars(watersic, "WaterSIC R_j", "Bits per column (high-rate theory)",
                 "bits per weight (ideal entropy code)", log_y=False, color=CODED)
    rfig.add_trace(go.Scatter(x=[-0.5, 15.5], y=[rate, rate], mode="lines",
                              name="GPTQ: R on every column",
                              line=dict(color=INK, dash="dash", width=2)))
    chart(rfig, "learn_fig_cols", left)
    dfig = _bars(scale * d, "GPTQ D_j ∝ d_j", "Distortion per column at the same mean rate",
                 "D_j per weight (log)", color="#9aa5b1")
    dfig.add_trace(go.Bar(x=np.arange(16), y=np.full(16, scale * gm), name="WaterSIC D_j (flat)",
                          marker_color=CODED))
    for value, name, dash in ((scale * am, "GPTQ mean ∝ AM(d)", "dash"),
                              (scale * gm, "WaterSIC mean ∝ GM(d)", "dot")):
        dfig.add_trace(go.Scatter(x=[-0.5, 15.5], y=[value] * 2, mode="lines", name=name,
                                  line=dict(color=INK, dash=dash, width=2)))
    chart(dfig, "learn_fig_cols_d", right)
    c1, c2, c3 = st.columns(3)
    c1.metric("AM(d)/GM(d) = D_GPTQ / D_WaterSIC", f"{am / gm:.3g}")
    c2.metric("GPTQ loses (bits)", f"{gptq_gap_bits(d):.3f}")
    c3.metric("WaterSIC above the limit (bits)", f"{WATERSIC_GAP_BITS:.4f}")


# --------------------------------------------------------------------------- 5 · rotations
def step_rotations():
    st.markdown(
        "A rotation x → Qx, W → WQᵀ computes the same function but changes d. A random (Haar) "
        "or randomized Hadamard rotation spreads outlier channels over all columns, so d gets "
        "flatter and GPTQ's loss shrinks. The eigenbasis makes d = λ, the worst case for GPTQ "
        "(AM(d) ≤ tr Σ_X / n, with equality there). WaterSIC does not care: Π d_j = det Σ_X in "
        "every basis.")
    st.latex(r"\Sigma \to Q\Sigma Q^\top,\quad W \to WQ^\top,\quad "
             r"\prod_j d_j(Q) = \det\Sigma \ \ \forall Q")
    c1, c2 = st.columns(2)
    spikes = c1.slider("outlier channels (300× the others' second moment)", 0, 8, 3,
                       key="learn_spikes")
    rot = c2.selectbox("rotation", list(ROTATION_NAMES), index=2, key="learn_rot",
                       format_func=lambda r: ROTATION_NAMES[r])
    diag = np.ones(32)
    diag[:spikes] = 300.0
    sigma = _ar1(32, 0.5) * np.sqrt(np.outer(diag, diag))
    rotated = get_rotation(rot, 32, seed=0, sigma=sigma).apply_sigma(sigma)
    # GPTQ decides the columns first to last: its d_j is Var(X_j | X_>j)
    d0, d1 = cholesky_diag(sigma, order="gptq"), cholesky_diag(rotated, order="gptq")
    fig = _bars(d0, "identity", "GPTQ's d_j = Var(X_j | X_>j) before and after the rotation",
                "d_j (log)", color="#9aa5b1")
    fig.add_trace(go.Bar(x=np.arange(32), y=d1, name=ROTATION_NAMES[rot], marker_color=CODED))
    chart(fig, "learn_fig_rot")
    c1, c2, c3 = st.columns(3)
    c1.metric("GPTQ gap, identity (bits)", f"{gptq_gap_bits(d0):.3f}")
    if rot == "haar":  # one draw is not the prediction: mean ± sd over random rotations
        haar = haar_gap(validate_covariance(sigma, label="step 5"))
        c2.metric(f"GPTQ gap, Haar (bits, mean ± sd of {haar['seeds']})", haar_text(haar),
                  help=f"The bars show one random rotation (seed 0): {gptq_gap_bits(d1):.3f}.")
    else:
        c2.metric(f"GPTQ gap, {ROTATION_NAMES[rot]} (bits)", f"{gptq_gap_bits(d1):.3f}")
    c3.metric("Σ log2 d_j, both bases (WaterSIC's D)",
              f"{np.log2(d0).sum():.2f} = {np.log2(d1).sum():.2f}")
    st.caption("Σ_X: an AR(1) correlation (ρ = 0.5) among 32 channels, the first ones scaled "
               "up as outliers; d in GPTQ's first-to-last order. Try the eigenbasis: GPTQ's gap "
               "is then at its largest. Act-order puts the outliers first, where GPTQ conditions "
               "them on every other channel.")


# --------------------------------------------------------------------------- 6 · real layers
@st.cache_data(max_entries=64, show_spinner=False)
def _block_gaps(bundle_name: str, block: int) -> tuple[list[dict], bool]:
    """Predicted gap per layer input of ``block``, and whether it is in GPTQ's column order.

    GPTQ's order (``d_gptq_by_rotation``, bundle format 2) when every layer stores it; else
    WaterSIC's order, without act-order (designed for GPTQ's order, it reads far too large).
    """
    bundle = load_bundle(bundle_name)
    covs = {label: bundle.layer(block, inp) for inp, label in LAYER_INPUT_NAMES.items()}
    gptq = all(c.d_gptq_by_rotation for c in covs.values())
    bases = ("identity", "act_order", "hadamard") if gptq else ("identity", "hadamard")
    table = []
    for label, cov in covs.items():
        ds = cov.d_gptq_by_rotation if gptq else cov.d_by_rotation
        table.append({"input": label, "n": cov.n, **{
            ROTATION_NAMES[r]: round(float(gptq_gap_bits(ds[r])), 3) for r in bases if r in ds}})
    return table, gptq


def step_real_layers():
    st.markdown(
        "On real LLM layers Σ_X has outlier channels and huge condition numbers, so the "
        "unrotated GPTQ gap can exceed a bit. The bundled statistics come from "
        "**SmolLM2-135M-Instruct** (4-bit GGUF weights) on WikiText-2; no Llama-3-8B bundle is "
        "shipped. The High-Rate papers report that after a random rotation GPTQ is within "
        "0.1 bit of WaterSIC on Llama-3-8B, depending on the layer type. Here: the predicted "
        "high-rate gap of every layer input of one block, from the stored Cholesky "
        "diagonals.")
    st.latex(r"\tfrac12\log_2\frac{\operatorname{AM}(d)}{\operatorname{GM}(d)} \le 0.1"
             r"\iff \frac{\operatorname{AM}(d)}{\operatorname{GM}(d)} \le 1.1487")
    bundles = installed_bundles()
    if not bundles:
        st.info(LLAMA3_HINT)
        return
    bundle = bundles[0]
    last = max(b for b, *_ in bundle.layers)
    block = st.slider("block", 0, last, min(15, last), key="learn_block")
    table, gptq_order = _block_gaps(bundle.name, block)
    fig = go.Figure()
    bases = [k for k in table[0] if k not in ("input", "n")]
    colors = {"identity (native channels)": "#9aa5b1", "act-order (sort by diag Σ)": WATER}
    for basis in bases:
        fig.add_trace(go.Bar(x=[row["input"] for row in table], y=[row[basis] for row in table],
                             name=basis, marker_color=colors.get(basis, CODED),
                             text=[f"{row[basis]:.3f}" for row in table], textposition="outside"))
    fig.add_hline(y=0.1, line=dict(color=INK, dash="dash"), annotation_text="0.1 bit",
                  annotation_position="top left")
    style_figure(fig, f"Predicted GPTQ − WaterSIC gap, {bundle.model_label}, block {block}",
                 "layer input", "bits per weight (high-rate theory)", height=440)
    chart(fig, "learn_fig_real")
    st.dataframe(table, width="stretch", key="learn_table", hide_index=True,
                 column_config={b: st.column_config.NumberColumn(format="%.3f") for b in bases})
    st.caption(("d in GPTQ's first-to-last order, Var(X_j | X_>j). " if gptq_order else
                "This bundle stores d only in WaterSIC's order, Var(X_j | X_<j) (format 1; "
                "regenerate it with 'wfviz collect' for GPTQ's). ") + LLAMA3_HINT)
    if st.button("Open this block's down_proj input on the Waterfilling page", key="learn_open"):
        select_source(f"bundle:{bundle.name}/{block}/down", page="pages/waterfilling.py")


STEPS = [
    ("1 · Weighted MSE: why Σ_X matters", step_wmse),
    ("2 · Reverse waterfilling: the limit", step_waterfilling),
    ("3 · SIC and the Cholesky view", step_sic),
    ("4 · GPTQ vs WaterSIC", step_gptq_vs_watersic),
    ("5 · Rotations", step_rotations),
    ("6 · Real LLM layers", step_real_layers),
]


def _current_step() -> int:
    if STEP_KEY not in st.session_state:
        try:
            st.session_state[STEP_KEY] = int(st.query_params.get("step", 1)) - 1
        except ValueError:
            st.session_state[STEP_KEY] = 0
    step = min(max(int(st.session_state[STEP_KEY]), 0), len(STEPS) - 1)
    st.session_state[STEP_KEY] = step
    return step


def _move(delta: int) -> None:
    st.session_state[STEP_KEY] = min(max(st.session_state[STEP_KEY] + delta, 0), len(STEPS) - 1)


def glossary() -> None:
    """The short glossary, first on the page (open when the sidebar's link brought us here)."""
    opened = st.query_params.get(GLOSSARY_PARAM) == "open"
    with st.expander("Glossary: Σ_X, d_j, SIC, AM/GM, the rate metrics and the other terms",
                     expanded=opened, icon=":material/menu_book:"):
        st.markdown(glossary_markdown(GLOSSARY_TERMS))
        st.caption("Each term is derived at length in the repository's docs/theory.md.")


ensure_frame("pages/learn.py")
glossary()
step = _current_step()
st.query_params["step"] = str(step + 1)
st.title(STEPS[step][0])
st.progress((step + 1) / len(STEPS), text=f"step {step + 1} of {len(STEPS)}")
STEPS[step][1]()
c1, _, c2 = st.columns([1, 4, 1])
c1.button("← Previous", key="learn_prev", on_click=_move, args=(-1,), disabled=step == 0)
c2.button("Next →", key="learn_next", on_click=_move, args=(1,),
          disabled=step == len(STEPS) - 1)
