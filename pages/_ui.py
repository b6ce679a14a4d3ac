"""Shared Streamlit UI: the Σ_X source sidebar, its cache, and small display helpers.

Every page reads the selected Σ_X with :func:`current_covariance`. The choice lives in
``st.session_state[SOURCE_KEY]`` as a SOURCE string of ``docs/architecture.md``
(``bundle:<name>/<block>/<input>`` or ``synthetic:<family>?n=..``) and is mirrored in the URL as
``?src=<SOURCE>``, so a link reproduces the view. Uploads are kept per session only
(``upload:<sha256>``): their bytes never go into the URL.

Caches are keyed on short explicit strings (the SOURCE, or the sha256 of an upload); array and
Covariance arguments carry a leading underscore so Streamlit never hashes them (it would only
sample big arrays, see docs/ecosystem-and-testing.md §1).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid

import numpy as np
import streamlit as st

from wfviz.covariance import Covariance
from wfviz.errors import WfvizError
from wfviz.sources import SYNTHETIC_FAMILIES, resolve_source

ENTRYPOINT = "app.py"
"""The app's entry script, relative to its folder."""
SOURCE_KEY = "wfviz_source"
"""Session-state key of the active SOURCE string (the last one that loaded)."""
QUERY_PARAM = "src"
"""URL query parameter that mirrors the active source."""
FALLBACK_SOURCE = "synthetic:spiked?n=256&seed=0&basis=native&n_spikes=4&spike_scale=1000.0"
"""Default source when no bundle is installed."""
PREFERRED_LAYER = (15, "down")
"""Default bundled layer: a middle block whose full matrix the bundle stores."""
SIGMA_NOTE = "Σ_X = E[xxᵀ], uncentred; GPTQ's H = 2Σ_X"
RATE_AXIS = "R, bits per coordinate (rate-distortion function)"
"""Axis title for every theoretical rate: says how the bits are counted."""
ROTATION_NAMES = {
    "identity": "identity (native channels)",
    "haar": "Haar random rotation",
    "hadamard": "randomized Hadamard",
    "eigenbasis": "eigenbasis (KLT)",
    "act_order": "act-order (sort by diag Σ)",
}
"""Display names of the rotations of ``wfviz.rotations.ROTATIONS``."""
DR_CURVE_POINTS = 161
"""Rates on the D(R) curve: 0 to 8 bits per coordinate in steps of 0.05."""
MIN_SYNTHETIC_N = 2
MAX_SYNTHETIC_N = 8192
"""Largest synthetic n offered: its n × n matrix and eigendecomposition stay interactive."""
MAX_SEED = 2**31 - 1
PRESENTER_KEY = "presenter"
"""Session-state key of the sidebar's presenter-mode toggle (it holds on every page)."""
PRESENTER_FONT = 17
"""Chart font size in presenter mode (titles get 3 more)."""
PRESENTER_TITLE_CHARS = 40
"""Chart titles wrap after about this many characters in presenter mode: a half-width chart
(in a column) on a 1280-pixel screen holds about 40 characters of its title, a full-width one
twice as many."""
PRESENTER_LINE_PX = 26
PRESENTER_LEGEND_DROP, PRESENTER_LEGEND_PX = 0.12, 50
# Larger text for a projector. Formulas grow less than the text so that the long ones still fit
# a 1280-pixel screen; display formulas may wrap their widest line into a scroll box only as a
# last resort. Slider labels get room above the thumb's value, which would otherwise cover them.
# Metric values grow where their column has room, never fall below Streamlit's own size, and
# wrap at a space rather than end in an ellipsis.
PRESENTER_CSS = """<style>
[data-testid="stMain"] [data-testid="stMarkdownContainer"] p,
[data-testid="stMain"] [data-testid="stMarkdownContainer"] li {font-size: 1.35rem !important;}
[data-testid="stMain"] [data-testid="stCaptionContainer"] p {font-size: 1.15rem !important;}
[data-testid="stMain"] [data-testid="stMarkdownContainer"] .katex {font-size: 1.05em !important;}
[data-testid="stMain"] .katex-display > .katex {font-size: 1.3em !important;}
[data-testid="stMain"] .katex-display {overflow-x: auto; overflow-y: hidden; padding: 0.2em 0;}
[data-testid="stMain"] [data-testid="stMetric"] {container-type: inline-size;}
[data-testid="stMain"] [data-testid="stMetricValue"],
[data-testid="stMain"] [data-testid="stMetricValue"] p {
 font-size: clamp(2.25rem, 24cqi, 2.6rem) !important; line-height: 1.25 !important;}
[data-testid="stMain"] [data-testid="stMetricValue"] [data-testid="stMarkdownContainer"],
[data-testid="stMain"] [data-testid="stMetricValue"] p {
 white-space: normal !important; overflow-wrap: break-word;}
[data-testid="stMain"] [data-testid="stMetricLabel"] p,
[data-testid="stMain"] [data-testid="stWidgetLabel"] p {font-size: 1.2rem !important;}
[data-testid="stMain"] [data-testid="stSlider"] [data-testid="stWidgetLabel"] {
 margin-bottom: 1.6rem !important;}
[data-testid="stMain"] [data-testid="stSliderThumbValue"] p,
[data-testid="stMain"] [data-testid="stSliderTickBar"] p {font-size: 1.05rem !important;}
[data-testid="stMain"] h1 {font-size: 3.0rem !important;}
[data-testid="stMain"] h2, [data-testid="stMain"] h3 {font-size: 2.2rem !important;}
</style>"""

_KINDS = {"bundled": "Bundled model", "synthetic": "Synthetic", "uploaded": "Upload"}
_PENDING_KEY = "wfviz_pending_source"
_INIT_KEY = "wfviz_initialised"
_RETURN_KEY = "wfviz_return_to"
_UPLOAD_COV = "wfviz_upload_cov"
_UPLOAD_ERR = "wfviz_upload_error"
_UPLOAD_DIGEST = "wfviz_upload_digest"
_SOURCE_ERR = "wfviz_source_error"
_UPLOAD_TYPES = ["npy", "npz", "pt", "pth", "safetensors"]
# (name, kind, min, max, default, step) of each family parameter; the ranges are what the UI
# offers, the library validates the values again.
_FAMILY_WIDGETS = {
    "powerlaw": [("alpha", float, 0.0, 4.0, 1.0, 0.1)],
    "exponential": [("rate", float, 0.0, 40.0, 10.0, 0.5)],
    "wishart": [("samples", int, 1, 1_000_000, 512, 64)],
    "spiked": [("n_spikes", int, 0, MAX_SYNTHETIC_N, 4, 1),
               ("spike_scale", float, 1.0, 1e6, 1000.0, 10.0)],
    "ar1": [("rho", float, -0.99, 0.99, 0.9, 0.01)],
}
_SYN_DEFAULTS = {"syn_family": "spiked", "syn_n": 256, "syn_seed": 0, "syn_basis": "native"}


# --------------------------------------------------------------------------- loading and caches
@st.cache_resource(max_entries=4, show_spinner="Loading Σ_X…")
def _resolve(spec: str) -> Covariance:
    # cache_resource: a Covariance can hold a 2 GB matrix; it is shared, never copied or mutated
    return resolve_source(spec)


@st.cache_resource(max_entries=2, show_spinner="Reading the upload…")
def _load_upload(digest: str, name: str, _data: bytes) -> Covariance:
    from wfviz.covariance_io import load_covariance

    return load_covariance(_data, name=name)


def load_upload(name: str, data: bytes) -> Covariance:
    """``load_covariance`` of uploaded bytes, cached on their sha256 (raises WfvizError)."""
    return _load_upload(hashlib.sha256(data).hexdigest(), name, data)


@st.cache_resource(max_entries=1, ttl=300)
def installed_bundles() -> list:
    """Every bundle ``wfviz.bundles.list_bundles`` finds (empty when none is readable)."""
    from wfviz.bundles import list_bundles

    try:
        return list_bundles()
    except WfvizError:
        return []


@st.cache_resource(max_entries=1)
def _device_label() -> str:
    from wfviz.device import device_label

    return device_label()


def cov_key(cov: Covariance) -> str:
    """A short cache key for ``cov``: its ``source_id``, else a digest of its eigenvalues."""
    if cov.source_id:
        return cov.source_id
    return "eig:" + hashlib.sha256(np.ascontiguousarray(cov.eigenvalues).tobytes()).hexdigest()


@st.cache_data(max_entries=32, show_spinner="Computing statistics…")
def _stats(key: str, _cov: Covariance, seed: int) -> dict:
    from wfviz.stats import layer_stats

    return layer_stats(_cov, seed=seed)


@st.cache_data(max_entries=64, show_spinner="Cholesky factorisation…")
def _rotated_d(key: str, _cov: Covariance, rotation: str, seed: int, order: str) -> np.ndarray:
    from wfviz.stats import rotated_d

    return rotated_d(_cov, rotation, seed=seed, order=order)


@st.cache_data(max_entries=16)
def _dr_curve(key: str, _eigenvalues: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from wfviz.theory import highrate_it_distortion
    from wfviz.waterfilling import distortion_rate_curve

    rates = np.linspace(0.0, 8.0, DR_CURVE_POINTS)
    return (rates, distortion_rate_curve(_eigenvalues, rates),
            highrate_it_distortion(_eigenvalues, rates))


def dr_curve_for(cov: Covariance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rates, D(R), σ² GM(λ) 2^(−2R))`` on :data:`DR_CURVE_POINTS` rates from 0 to 8 bits."""
    return _dr_curve(cov_key(cov), cov.eigenvalues)


def stats_for(cov: Covariance, *, seed: int = 0) -> dict:
    """``wfviz.stats.layer_stats(cov)``, cached per source."""
    return _stats(cov_key(cov), cov, seed)


def d_for(cov: Covariance, rotation: str, *, seed: int = 0, order: str = "watersic") -> np.ndarray:
    """Cholesky diagonal ``d`` after ``rotation`` (``wfviz.stats.rotated_d``), cached per source.

    ``order="watersic"`` (``Var(X_j | X_<j)``) gives WaterSIC's per-column variances,
    ``order="gptq"`` (``Var(X_j | X_>j)``) the ones GPTQ's predicted gap needs. Raises
    WfvizError when the rotation needs a full matrix the source lacks.
    """
    return _rotated_d(cov_key(cov), cov, rotation, seed, order)


@st.cache_data(max_entries=32, show_spinner="Averaging over random rotations…")
def _haar_gap(key: str, _cov: Covariance) -> dict:
    from wfviz.stats import haar_gap

    return haar_gap(_cov)


def haar_gap_for(cov: Covariance) -> dict:
    """``wfviz.stats.haar_gap(cov)`` (mean, std, min, max over the seeds), cached per source:
    the Haar prediction is never one random draw."""
    return _haar_gap(cov_key(cov), cov)


def spread_text(std: float, digits: int = 3) -> str:
    """A standard deviation to ``digits`` decimals, or to one significant digit when smaller
    (a spread is never shown as 0.000 unless it is 0)."""
    return f"{std:.{digits}f}" if std == 0 or std >= 0.5 * 10**-digits else f"{std:.1g}"


def haar_text(haar: dict, digits: int = 3) -> str:
    """``"0.734 ± 0.149"``: a Haar prediction as mean ± sd over its seeds."""
    return f"{haar['mean']:.{digits}f} ± {spread_text(haar['std'], digits)}"


def rotation_availability(cov: Covariance, *, quantize: bool = False) -> dict[str, str | None]:
    """Rotation name → None when usable for ``cov``, else the reason it is not
    (:meth:`~wfviz.covariance.Covariance.unsupported_reason`)."""
    return {name: cov.unsupported_reason(name, quantize=quantize) for name in ROTATION_NAMES}


# --------------------------------------------------------------------------- spec ⇄ widgets
def _synthetic_state(spec: str) -> dict | None:
    """Widget values for a ``synthetic:`` spec, or None if the UI cannot show it."""
    family, _, query = spec[len("synthetic:"):].partition("?")
    if family not in _FAMILY_WIDGETS:
        return None
    fields = dict(item.partition("=")[::2] for item in query.split("&") if item)
    try:
        state = {"syn_family": family, "syn_n": int(fields.pop("n", 256)),
                 "syn_seed": int(fields.pop("seed", 0)), "syn_basis": fields.pop("basis", "native")}
        for name, kind, low, high, _, _ in _FAMILY_WIDGETS[family]:
            if name in fields:
                value = kind(float(fields.pop(name)))
                if not low <= value <= high:
                    return None
                state[f"syn_{family}_{name}"] = value
    except ValueError:
        return None
    in_range = (MIN_SYNTHETIC_N <= state["syn_n"] <= MAX_SYNTHETIC_N
                and 0 <= state["syn_seed"] <= MAX_SEED)
    if fields or not in_range or state["syn_basis"] not in ("native", "random"):
        return None
    return state


def _bundle_state(spec: str) -> dict | None:
    name, block, layer_input = (spec[len("bundle:"):].rsplit("/", 2) + ["", ""])[:3]
    try:
        return {"src_bundle": name, "src_block": int(block), "src_input": layer_input}
    except ValueError:
        return None


def _widget_state(spec: str) -> dict | None:
    if spec.startswith("synthetic:"):
        state = _synthetic_state(spec)
        return None if state is None else {"src_kind": "synthetic", **state}
    if spec.startswith("bundle:"):
        state = _bundle_state(spec)
        return None if state is None else {"src_kind": "bundled", **state}
    return None


def _synthetic_spec() -> str:
    ss = st.session_state
    family = ss["syn_family"]
    fields = [f"n={ss['syn_n']}", f"seed={ss['syn_seed']}", f"basis={ss['syn_basis']}"]
    fields += [f"{name}={ss[f'syn_{family}_{name}']!r}"
               for name, *_ in _FAMILY_WIDGETS[family]]
    return f"synthetic:{family}?" + "&".join(fields)


def default_source() -> str:
    """The bundled SmolLM2 layer (block 15, down_proj input) when a bundle exists, else spiked.

    Other bundles: the middle full block's down_proj input (or its first full layer).
    """
    for bundle in installed_bundles():
        full = [(b, i) for b, i, _, has_full in bundle.layers if has_full]
        if not full:
            continue
        down = [layer for layer in full if layer[1] == PREFERRED_LAYER[1]]
        block, name = (PREFERRED_LAYER if PREFERRED_LAYER in full else
                       down[len(down) // 2] if down else full[0])
        return f"bundle:{bundle.name}/{block}/{name}"
    return FALLBACK_SOURCE


def select_source(spec: str, *, page: str | None = None) -> None:
    """Make ``spec`` the shared source (sidebar, session and URL), then rerun or open ``page``.

    For pages: the sidebar widgets already exist in this run, so the new values are applied at
    the start of the next run.
    """
    st.session_state[_PENDING_KEY] = spec
    if page:
        st.switch_page(page)
    st.rerun()


def _apply_pending() -> None:
    """Load a pending spec (first run: the URL's ``?src=``) into the sidebar widgets."""
    ss = st.session_state
    spec = ss.pop(_PENDING_KEY, None)
    if spec is None and not ss.get(_INIT_KEY):
        ss[_INIT_KEY] = True
        spec = st.query_params.get(QUERY_PARAM) or default_source()
    if spec is None:
        return
    state = _widget_state(spec)
    if state is None:
        ss[_SOURCE_ERR] = (f"The link's source {spec!r} is not a bundled or synthetic source this "
                           "app can show; showing the default instead.")
        state = _widget_state(default_source())
    else:
        try:
            _resolve(spec)
        except WfvizError as exc:
            ss[_SOURCE_ERR] = f"{exc} Showing the default source instead."
            state = _widget_state(default_source())
    for key, value in state.items():
        ss[key] = value


# --------------------------------------------------------------------------- sidebar
SESSION_WINDOW_S = 300.0
"""A browser session counts as active for this long after its last full rerun."""


@st.cache_resource
def _session_clock() -> tuple[dict, threading.Lock]:
    return {}, threading.Lock()


def touch_session() -> int:
    """Mark this session active now; the number of sessions active in the last window.

    Heavy runs limit their torch threads (a core stays free for the others' slider moves)
    only when more than one session is active; a lone user gets every core.
    """
    sid = st.session_state.setdefault("_wfviz_session", uuid.uuid4().hex)
    clock, lock = _session_clock()
    now = time.monotonic()
    with lock:
        clock[sid] = now
        for old in [k for k, t in clock.items() if now - t > SESSION_WINDOW_S]:
            del clock[old]
        return len(clock)


def presenter() -> bool:
    """Whether presenter mode (large fonts, the sidebar toggle) is on."""
    return bool(st.session_state.get(PRESENTER_KEY, False))


def chart(fig, key: str, container=None) -> None:
    """``st.plotly_chart`` of ``fig`` filling ``container`` (a column, or the page when None),
    with larger fonts in presenter mode."""
    if presenter():
        from wfviz.plots import wrap_title

        chars = PRESENTER_TITLE_CHARS * (1 if container is not None else 2)
        title = wrap_title(fig.layout.title.text or "", chars)
        extra = PRESENTER_LINE_PX * title.count("<br>")
        fig.update_layout(font=dict(size=PRESENTER_FONT), title=dict(
            text=title or None, font_size=PRESENTER_FONT + 3),
            margin_t=(fig.layout.margin.t or 50) + extra,
            height=(fig.layout.height + extra) if fig.layout.height else None)
        # Streamlit's chart theme sets the tick, axis-title and legend sizes one by one, and
        # those win over layout.font: enlarge each.
        fig.update_xaxes(tickfont_size=PRESENTER_FONT - 1, title_font_size=PRESENTER_FONT,
                         automargin=True)
        fig.update_yaxes(tickfont_size=PRESENTER_FONT - 1, title_font_size=PRESENTER_FONT,
                         automargin=True)
        fig.update_layout(legend_font_size=PRESENTER_FONT - 1,
                          legend_title_font_size=PRESENTER_FONT - 1)
        legend = fig.layout.legend
        if legend.orientation == "h" and (legend.y or 0) < 0:
            # larger ticks and axis titles need more room above a legend under the plot
            fig.update_layout(legend_y=legend.y - PRESENTER_LEGEND_DROP,
                              margin_b=(fig.layout.margin.b or 90) + PRESENTER_LEGEND_PX,
                              height=(fig.layout.height or 420) + PRESENTER_LEGEND_PX)
        fig.update_annotations(font_size=PRESENTER_FONT - 2)
    (container or st).plotly_chart(fig, width="stretch", key=key)


def sidebar_presenter() -> None:
    """The presenter-mode toggle and the glossary link (sidebar), and the large-font style."""
    with st.sidebar:
        st.toggle("Presenter mode (large fonts)", key=PRESENTER_KEY,
                  help="Larger text, formulas, metrics and chart fonts on every page, for a "
                       "projector.")
        st.page_link("pages/learn.py", label="Glossary of terms", icon=":material/menu_book:",
                     query_params={"glossary": "open"})
    if presenter():
        st.markdown(PRESENTER_CSS, unsafe_allow_html=True)


def sidebar_source() -> None:
    """Render the shared sidebar (source choice, device) and activate the chosen Σ_X."""
    touch_session()
    _apply_pending()
    with st.sidebar:
        st.subheader("Σ_X source")
        kind = st.radio("Source", list(_KINDS), key="src_kind", format_func=_KINDS.get,
                        horizontal=True, label_visibility="collapsed")
        spec = {"bundled": _bundle_widgets, "synthetic": _synthetic_widgets,
                "uploaded": _upload_widget}[kind]()
        if spec is not None:
            _activate(spec)
        error = st.session_state.pop(_SOURCE_ERR, None)
        if error:
            st.error(error)
        st.divider()
        st.caption(f"Compute device: **{_device_label()}**")


def _activate(spec: str) -> None:
    """Make ``spec`` active if it loads; otherwise keep the previous source and say why."""
    ss = st.session_state
    if not spec.startswith("upload:"):
        try:
            _resolve(spec)
        except WfvizError as exc:
            ss[_SOURCE_ERR] = f"{exc} The previous source stays selected."
            return
        st.query_params[QUERY_PARAM] = spec
    elif QUERY_PARAM in st.query_params:
        del st.query_params[QUERY_PARAM]
    ss[SOURCE_KEY] = spec


def _bundle_widgets() -> str | None:
    from wfviz.bundles import LAYER_INPUT_NAMES, LLAMA3_HINT

    ss = st.session_state
    bundles = {b.name: b for b in installed_bundles()}
    with st.expander("Llama-3-8B: not shipped"):
        st.caption(LLAMA3_HINT)
    if not bundles:
        st.info("No bundle is installed; choose Synthetic or Upload.")
        return None
    if ss.get("src_bundle") not in bundles:
        ss["src_bundle"] = next(iter(bundles))
    bundle = bundles[st.selectbox("Bundle", list(bundles), key="src_bundle")]
    layers = bundle.layers
    inputs = list(dict.fromkeys(i for _, i, _, _ in layers))
    if ss.get("src_input") not in inputs:
        ss["src_input"] = PREFERRED_LAYER[1] if PREFERRED_LAYER[1] in inputs else inputs[0]
    name = st.selectbox("Layer input", inputs, key="src_input",
                        format_func=lambda i: LAYER_INPUT_NAMES.get(i, i))
    full = {b: has_full for b, i, _, has_full in layers if i == name}
    if ss.get("src_block") not in full:
        ss["src_block"] = next((b for b in full if full[b]), next(iter(full)))
    block = st.selectbox("Block", list(full), key="src_block",
                         format_func=lambda b: f"{b} · full Σ_X" if full[b] else f"{b}")
    st.caption(f"{bundle.model_label}; {bundle.manifest.get('tokens', '?')} tokens. "
               "Blocks marked 'full Σ_X' store the whole matrix; the others store eigenvalues, "
               "the diagonal and Cholesky diagonals only.")
    return f"bundle:{bundle.name}/{block}/{name}"


def _synthetic_widgets() -> str:
    ss = st.session_state
    for key, value in _SYN_DEFAULTS.items():
        ss.setdefault(key, value)
    family = st.selectbox("Family", list(SYNTHETIC_FAMILIES), key="syn_family")
    st.caption(SYNTHETIC_FAMILIES[family])
    for name, kind, low, high, default, step in _FAMILY_WIDGETS[family]:
        key = f"syn_{family}_{name}"
        ss.setdefault(key, default)
        st.number_input(name, min_value=kind(low), max_value=kind(high), step=kind(step),
                        key=key)
    st.number_input("n (size of Σ_X)", min_value=MIN_SYNTHETIC_N, max_value=MAX_SYNTHETIC_N,
                    step=64, key="syn_n")
    cols = st.columns(2)
    cols[0].number_input("seed", min_value=0, max_value=MAX_SEED, step=1, key="syn_seed")
    cols[1].selectbox("basis", ["native", "random"], key="syn_basis",
                      help="native: the family's own channels; random: Haar-rotated.")
    return _synthetic_spec()


def _upload_widget() -> str | None:
    ss = st.session_state
    file = st.file_uploader(
        "Σ_X file", type=_UPLOAD_TYPES, key="src_upload",
        help="An n × n matrix, or a vector of eigenvalues only (.npy .npz .pt .pth .safetensors); "
             "never unpickled.")
    st.caption("A full n × n Σ_X, or only its eigenvalues (then the basis-dependent views are "
               "disabled). Uploads are not part of the page link.")
    if file is None:
        return None
    # Hash each upload once: a 2 GB file takes seconds, and the sidebar runs on every rerun.
    known = ss.get(_UPLOAD_DIGEST)
    data = file.getvalue()
    if known and known[0] == file.file_id:
        digest = known[1]
    else:
        digest = hashlib.sha256(data).hexdigest()
        ss[_UPLOAD_DIGEST] = (file.file_id, digest)
    failed = ss.get(_UPLOAD_ERR)
    if failed and failed[0] == digest:
        ss[_SOURCE_ERR] = failed[1]
        return None
    try:
        cov = _load_upload(digest, file.name, data)
    except WfvizError as exc:
        msg = f"{exc} The previous source stays selected."
        ss[_UPLOAD_ERR] = (digest, msg)
        ss[_SOURCE_ERR] = msg
        return None
    ss[_UPLOAD_COV] = cov
    return f"upload:{digest}"


# --------------------------------------------------------------------------- page helpers
def sticky_multiselect(label: str, options: list, default: list, key: str, container=None,
                       **kwargs) -> list:
    """``st.multiselect`` whose choice survives options that go away and come back.

    A source that allows fewer options (an eigenvalues-only upload allows two rotations)
    narrows the choice; once the options are back, so are the choices the user had made.
    """
    ss = st.session_state
    wanted_key, seen_key = f"{key}__wanted", f"{key}__options"
    ss.setdefault(wanted_key, list(default))
    if key not in ss or ss.get(seen_key) != list(options):
        ss[key] = [o for o in options if o in ss[wanted_key]]
        ss[seen_key] = list(options)

    def remember() -> None:
        ss[wanted_key] = list(ss[key]) + [o for o in ss[wanted_key] if o not in options]

    return (container or st).multiselect(label, options, key=key, on_change=remember, **kwargs)


def ensure_frame(page: str) -> None:
    """Reopen ``page`` through ``app.py`` when Streamlit ran the page file on its own.

    Because the pages live in a folder named ``pages/``, the first script run after the
    server starts uses Streamlit's old folder-based navigation; a deep link then runs the page
    without the sidebar. Call this first in every page script (``page`` = its path from the
    app folder); :func:`return_to_deep_link` in ``app.py`` finishes the detour.
    """
    if st.session_state.get(_INIT_KEY):
        return
    st.session_state[_RETURN_KEY] = page
    st.switch_page(ENTRYPOINT, query_params=st.query_params.to_dict())


def return_to_deep_link() -> None:
    """In ``app.py`` after the sidebar: open the page that :func:`ensure_frame` detoured from."""
    page = st.session_state.pop(_RETURN_KEY, None)
    if page:
        st.switch_page(page, query_params=st.query_params.to_dict())


def current_source() -> str | None:
    """The active SOURCE string (``upload:<sha256>`` for an upload), or None."""
    return st.session_state.get(SOURCE_KEY)


def current_covariance() -> Covariance | None:
    """The Σ_X chosen in the sidebar (cached), or None after showing why it is unavailable."""
    spec = current_source()
    if spec is None:
        st.info("Choose a Σ_X source in the sidebar.")
        return None
    if spec.startswith("upload:"):
        cov = st.session_state.get(_UPLOAD_COV)
        if cov is None:
            st.info("Upload a Σ_X file in the sidebar.")
        return cov
    try:
        return _resolve(spec)
    except WfvizError as exc:
        show_error(exc)
        return None


def show_error(exc: Exception) -> None:
    """Show a wfviz error as its one sentence (no traceback)."""
    st.error(str(exc), icon=":material/error:")


def source_caption(cov: Covariance) -> None:
    """One caption saying what the data is, plus the loader's notes."""
    extent = "full matrix" if cov.is_full else "eigenvalues only"
    st.caption(f"**{cov.label or 'Σ_X'}** · n = {cov.n:,} · {extent} · {SIGMA_NOTE}")
    for note in cov.notes:
        st.caption(f"Note: {note}")


def requires_full_matrix(cov: Covariance, feature: str) -> bool:
    """True if ``cov`` has its full matrix; else explain (st.info) why ``feature`` is off."""
    if cov.is_full:
        return True
    kept = (" It does store the Cholesky diagonals for " + ", ".join(sorted(cov.d_by_rotation))
            + "." if cov.d_by_rotation else "")
    st.info(f"{feature} needs the full Σ_X matrix, but this source has only its eigenvalues.{kept}"
            " Pick a bundled block marked 'full Σ_X', a synthetic source, or upload an n × n "
            "matrix.", icon=":material/info:")
    return False


def follow_job(run, *, label: str, cancel_key: str, poll_s: float = 0.5) -> None:
    """Draw a background whole-model job's progress (with an ETA) until it ends, with Cancel;
    then its outcome in the same status box. Errors of the input or of resources show as one
    sentence."""
    from wfviz.errors import ResourceError

    box = st.status(f"Running {label}…", expanded=True)
    bar = box.progress(0.0, text="starting")
    box.button("Cancel", key=cancel_key, on_click=run.cancel)
    while not run.wait(poll_s):
        s = run.status()
        if s.queue is not None:
            bar.progress(0.0, text=f"queued: {s.queue.ahead} run(s) ahead")
            continue
        eta = f" · about {s.eta_s:.0f} s left" if s.eta_s is not None else ""
        bar.progress(s.fraction, text=f"{s.fraction:.0%} · {s.elapsed_s:.0f} s{eta} · {s.message}")
    s = run.status()
    if s.cancelled:
        box.update(label=f"Cancelled; nothing was written for {label}", state="error")
    elif s.error is not None:
        box.update(label="Stopped", state="error")
        if not isinstance(s.error, (WfvizError, ResourceError, MemoryError)):
            raise s.error
        show_error(s.error)
    else:
        box.update(label=f"Done in {s.elapsed_s:.0f} s", state="complete", expanded=False)
