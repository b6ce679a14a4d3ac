"""Learn page: a guided walkthrough for a lecture, one small instant example per step."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages._figures import column_rates_figure, style_figure, vessel_figure
from pages._ui import ROTATION_NAMES, ensure_frame, installed_bundles, select_source
from wfviz.bundles import LAYER_INPUT_NAMES, LLAMA3_HINT, load_bundle
from wfviz.rotations import get_rotation
from wfviz.theory import WATERSIC_GAP_BITS, cholesky_diag, gptq_gap_bits
from wfviz.waterfilling import reverse_waterfill

STEP_KEY = "learn_step"
PRESENTER_CSS = """<style>
[data-testid="stMarkdownContainer"] p, [data-testid="stMarkdownContainer"] li {font-size: 1.45rem;}
.katex {font-size: 1.7em !important;}
[data-testid="stMetricValue"] {font-size: 2.6rem;}
h1 {font-size: 3.2rem !important;} h2, h3 {font-size: 2.4rem !important;}
</style>"""


def _spectrum(n: int, decay: float) -> np.ndarray:
    return np.arange(1, n + 1, dtype=float) ** (-decay)


def _ar1(n: int, rho: float) -> np.ndarray:
    idx = np.arange(n)
    return rho ** np.abs(idx[:, None] - idx[None, :])


def _bars(values, name: str, title: str, y: str, *, log_y: bool = True) -> go.Figure:
    fig = go.Figure(go.Bar(x=np.arange(len(values)), y=values, name=name))
    return style_figure(fig, title, "coordinate / column j", y, log_y=log_y, height=360)


def step_wmse():
    st.markdown("A layer computes y = W x. Quantizing W to Ŵ damages the output by "
                "E‖(W−Ŵ)x‖², which weights the weight error by **Σ_X = E[xxᵀ]**: errors along "
                "directions the inputs use a lot cost a lot, errors along quiet directions are "
                "almost free. Turn the error vector below and watch the damage change.")
    st.latex(r"D = \frac{1}{a n}\operatorname{tr}\big((W-\hat W)\,\Sigma_X\,(W-\hat W)^\top\big)")
    angle = st.slider("direction of the error e (degrees)", 0, 180, 30, key="learn_angle")
    ratio = st.slider("λ₁ / λ₂ of the 2×2 Σ_X", 1.0, 100.0, 20.0, key="learn_ratio")
    sigma = get_rotation("haar", 2, seed=3).apply_sigma(np.diag([ratio, 1.0]))
    thetas = np.deg2rad(np.arange(181))
    dirs = np.stack([np.cos(thetas), np.sin(thetas)])
    damage = np.einsum("in,ij,jn->n", dirs, sigma, dirs)
    fig = style_figure(go.Figure(go.Scatter(x=np.arange(181), y=damage, mode="lines",
                                       name="eᵀΣe for ‖e‖ = 1")),
                  "Same error size, different damage", "direction (degrees)", "eᵀ Σ_X e",
                  height=340)
    fig.add_trace(go.Scatter(x=[angle], y=[damage[angle]], mode="markers", name="your e",
                             marker=dict(size=14)))
    st.plotly_chart(fig, width="stretch", key="learn_fig_wmse")
    st.metric("damage eᵀΣe of your error", f"{damage[angle]:.3g}")


def step_waterfilling():
    st.markdown("In the eigenbasis of Σ_X the rows of W become independent Gaussians of "
                "variances σ²λ_i. The best code pours water to a level θ: each coordinate keeps "
                "distortion min(θ, σ²λ_i), and only what sticks out above the water costs bits. "
                "Coordinates under the water get **zero** bits.")
    st.latex(r"R_i = \max\Big(0, \tfrac12\log_2\frac{\sigma^2\lambda_i}{\theta}\Big),\qquad "
             r"D_i = \min(\theta, \sigma^2\lambda_i)")
    decay = st.slider("spectrum decay λ_i = i^(−α)", 0.0, 3.0, 1.5, 0.1, key="learn_decay")
    rate = st.slider("rate R (bits per coordinate)", 0.05, 4.0, 0.5, 0.05, key="learn_rate")
    lam = _spectrum(24, decay)
    sol = reverse_waterfill(lam, rate=rate)
    st.plotly_chart(vessel_figure(lam, float(sol.theta)), width="stretch", key="learn_vessel")
    c1, c2 = st.columns(2)
    c1.metric("water level θ", f"{float(sol.theta):.3g}")
    c2.metric("coordinates with zero rate", int(np.sum(sol.rates == 0)))


def step_sic():
    st.markdown("Write Σ_X = L Lᵀ (Cholesky). Quantizing the columns one at a time and feeding "
                "each decided column's error forward (successive interference cancellation, "
                "SIC) leaves column j with only its **innovation variance** d_j = L_jj² = "
                "Var(X_j | X_<j): what the earlier columns cannot predict. GPTQ is exactly this "
                "structure. The product of the d_j never changes: it is det Σ_X.")
    st.latex(r"d_j = L_{jj}^2 = \operatorname{Var}(X_j \mid X_{<j}),\qquad "
             r"\prod_j d_j = \det \Sigma_X")
    rho = st.slider("correlation ρ of an AR(1) input", 0.0, 0.99, 0.8, 0.01, key="learn_rho")
    sigma = _ar1(16, rho)
    d = cholesky_diag(sigma)
    st.plotly_chart(_bars(d, "d_j", "Innovation variances d_j", "d_j (log)"), width="stretch",
                    key="learn_fig_sic")
    c1, c2 = st.columns(2)
    c1.metric("Σ log2 d_j", f"{np.log2(d).sum():.4f}")
    c2.metric("log2 det Σ_X", f"{np.linalg.slogdet(sigma)[1] / np.log(2):.4f}")


def step_gptq_vs_watersic():
    st.markdown("**GPTQ** gives every column the same step, hence the same rate. **WaterSIC** "
                "uses the step c/L_jj, one step in the whitened domain: a waterfilling over d. "
                "At high rate WaterSIC is 0.2546 bit above the limit whatever Σ_X is, and GPTQ "
                "loses another ½·log2(AM(d)/GM(d)).")
    st.latex(r"\text{gap}_{\text{GPTQ}-\text{WaterSIC}} = \tfrac12\log_2"
             r"\frac{\operatorname{AM}(d)}{\operatorname{GM}(d)},\qquad "
             r"\text{gap}_{\text{WaterSIC}-\text{IT}} = \tfrac12\log_2\frac{2\pi e}{12}")
    decay = st.slider("spectrum decay α", 0.0, 3.0, 1.5, 0.1, key="learn_decay2")
    rate = st.slider("rate R", 1.0, 8.0, 4.0, 0.5, key="learn_rate2")
    d = _spectrum(16, decay)
    gm = np.exp(np.mean(np.log(d)))
    watersic = np.maximum(0.0, rate + 0.5 * np.log2(d / gm))
    st.plotly_chart(column_rates_figure(watersic, rate, "bits per column (high-rate theory)"),
                    width="stretch", key="learn_fig_cols")
    c1, c2 = st.columns(2)
    c1.metric("GPTQ loses (bits)", f"{gptq_gap_bits(d):.3f}")
    c2.metric("WaterSIC above the limit (bits)", f"{WATERSIC_GAP_BITS:.4f}")


def step_rotations():
    st.markdown("A rotation x → Qx, W → WQᵀ computes the same function but changes d. A "
                "random (Haar) or randomized Hadamard rotation spreads outlier channels over "
                "all columns, so d gets flat and GPTQ's loss shrinks. The eigenbasis makes "
                "d = λ: the worst case for GPTQ. WaterSIC does not care: Π d is fixed.")
    st.latex(r"\Sigma \to Q\Sigma Q^\top,\quad W \to WQ^\top,\quad "
             r"\prod_j d_j(Q) = \det\Sigma \ \ \forall Q")
    spikes = st.slider("outlier channels", 0, 8, 3, key="learn_spikes")
    rot = st.selectbox("rotation", list(ROTATION_NAMES), index=2, key="learn_rot",
                       format_func=lambda r: ROTATION_NAMES[r])
    diag = np.ones(32)
    diag[:spikes] = 300.0
    sigma = _ar1(32, 0.5) * np.sqrt(np.outer(diag, diag))
    rotated = get_rotation(rot, 32, seed=0, sigma=sigma).apply_sigma(sigma)
    d0, d1 = cholesky_diag(sigma), cholesky_diag(rotated)
    fig = _bars(d0, "identity", "d_j before and after the rotation", "d_j (log)")
    fig.add_trace(go.Bar(x=np.arange(32), y=d1, name=rot))
    st.plotly_chart(fig, width="stretch", key="learn_fig_rot")
    c1, c2 = st.columns(2)
    c1.metric("GPTQ gap, identity (bits)", f"{gptq_gap_bits(d0):.3f}")
    c2.metric(f"GPTQ gap, {rot} (bits)", f"{gptq_gap_bits(d1):.3f}")


def step_real_layers():
    st.markdown("On real LLM layers Σ_X has massive outlier channels and huge condition "
                "numbers, so the unrotated GPTQ gap can exceed a bit. The bundled statistics "
                "come from **SmolLM2-135M-Instruct** (4-bit GGUF) on WikiText-2; no Llama-3-8B "
                "bundle is shipped. The High-Rate papers report that after a random rotation "
                "GPTQ is within 0.1 bit of WaterSIC on Llama-3-8B, depending on layer type.")
    st.latex(r"\tfrac12\log_2\frac{\operatorname{AM}(d)}{\operatorname{GM}(d)} \le 0.1"
             r"\iff \frac{\operatorname{AM}(d)}{\operatorname{GM}(d)} \le 1.1487")
    bundles = installed_bundles()
    if not bundles:
        st.info(LLAMA3_HINT)
        return
    bundle = load_bundle(bundles[0].name)
    block = st.slider("block", 0, max(b for b, *_ in bundle.layers), 15, key="learn_block")
    table = []
    for inp in LAYER_INPUT_NAMES:
        cov = bundle.layer(block, inp)
        gaps = {r: gptq_gap_bits(cov.d_by_rotation[r]) for r in ("identity", "hadamard")
                if r in cov.d_by_rotation}
        table.append({"input": LAYER_INPUT_NAMES[inp], "n": cov.n, **{
            f"GPTQ gap, {r} (bits)": round(v, 3) for r, v in gaps.items()}})
    st.dataframe(table, width="stretch", key="learn_table")
    st.caption(LLAMA3_HINT)
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


ensure_frame("pages/learn.py")
if st.toggle("Presenter mode (large fonts)", key="learn_presenter"):
    st.markdown(PRESENTER_CSS, unsafe_allow_html=True)
step = _current_step()
st.query_params["step"] = str(step + 1)
st.title(STEPS[step][0])
st.progress((step + 1) / len(STEPS), text=f"step {step + 1} of {len(STEPS)}")
STEPS[step][1]()
c1, _, c2 = st.columns([1, 4, 1])
c1.button("← Previous", key="learn_prev", on_click=_move, args=(-1,), disabled=step == 0)
c2.button("Next →", key="learn_next", on_click=_move, args=(1,),
          disabled=step == len(STEPS) - 1)
