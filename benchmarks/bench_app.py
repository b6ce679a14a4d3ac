"""Server time of the Streamlit app: page loads and one Waterfilling slider move at large n.

Usage: ``.venv/bin/python benchmarks/bench_app.py [--n 14336] [--repeat 5]``

Two measurements of a slider move on an eigenvalues-only spectrum of size ``n`` (Llama-3-8B's
down_proj input has n = 14336):

* ``fragment``: the work the Waterfilling page's ``@st.fragment`` does per move (solve the
  waterfilling, build the five figures, serialise them to JSON as ``st.plotly_chart`` does),
  timed directly;
* ``AppTest rerun``: a full scripted rerun through ``streamlit.testing`` (the sidebar, the page
  and the fragment; a browser reruns only the fragment, so this is an upper bound).

Each time is printed with its ratio to the 300 ms budget and to the cost of one sort of the
spectrum measured in the same run. Page loads are AppTest runs from a warm cache.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pages._figures import (  # noqa: E402
    cholesky_figure,
    column_rates_figure,
    dr_curve_figure,
    rates_figure,
    vessel_figure,
)
from pages._ui import RATE_AXIS  # noqa: E402
from wfviz.theory import highrate_it_distortion  # noqa: E402
from wfviz.waterfilling import distortion_rate_curve, reverse_waterfill  # noqa: E402

BUDGET_S = 0.300


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fragment_work(lam: np.ndarray, rate: float, curve) -> int:
    """One slider move's server work; returns the bytes of figure JSON sent."""
    result = reverse_waterfill(lam, rate=rate)
    watersic = reverse_waterfill(lam, rate=float(result.rate))
    figs = [vessel_figure(lam, float(result.theta)), rates_figure(result.rates, RATE_AXIS),
            dr_curve_figure(*curve[:2], (float(result.rate), float(result.distortion)),
                            RATE_AXIS, curve[2]),
            cholesky_figure(lam, "eigenbasis"),
            column_rates_figure(watersic.rates, float(result.rate), RATE_AXIS)]
    return sum(len(f.to_json()) for f in figs)


def apptest_times(lam: np.ndarray, repeat: int) -> dict:
    import streamlit as st
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    init = PagesManager.__init__

    def init_without_pages_folder(self, *args, **kwargs):  # see tests/_apptest.py
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    PagesManager.__init__ = init_without_pages_folder
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    out = {"first load (cold caches, default source)": median_time(at.run, 1)}
    out["rerun, covariance page (warm)"] = median_time(at.run, repeat)
    at.switch_page("pages/waterfilling.py").run()
    out["rerun, waterfilling page (warm, default source)"] = median_time(at.run, repeat)
    buf = io.BytesIO()
    np.save(buf, lam)
    at.radio(key="src_kind").set_value("uploaded").run()
    at.file_uploader(key="src_upload").set_value(("lam.npy", buf.getvalue(), "x")).run()
    assert not at.exception, at.exception
    rates = iter(np.linspace(1.0, 4.0, repeat + 1))
    out[f"slider move, AppTest rerun, n={lam.size}"] = median_time(
        lambda: at.slider(key="wf_rate").set_value(round(float(next(rates)), 2)).run(), repeat)
    assert not at.exception, at.exception
    shown = {m.label: m.value for m in at.metric}
    assert shown["zero-rate coordinates"].endswith(f"of {lam.size:,}"), shown
    assert shown["rate R"] == f"{at.slider(key='wf_rate').value:.3f} bits", shown
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=14336)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    lam = np.sort(rng.pareto(1.5, args.n) + 1e-3)[::-1]
    sort_s = median_time(lambda: np.sort(lam), args.repeat)
    curve = (np.linspace(0, 8, 161), distortion_rate_curve(lam, np.linspace(0, 8, 161)),
             highrate_it_distortion(lam, np.linspace(0, 8, 161)))
    sent = fragment_work(lam, 2.0, curve)
    frag_s = median_time(lambda: fragment_work(lam, 2.0, curve), args.repeat)
    print(f"n = {args.n}, median of {args.repeat}; one np.sort of the spectrum: "
          f"{sort_s * 1e3:.2f} ms")
    print(f"{'measurement':58s} {'ms':>9s} {'/ budget':>9s} {'/ sort':>9s}")
    rows = {f"slider move, fragment work, n={args.n} ({sent / 1e3:.0f} kB JSON)": frag_s}
    rows |= apptest_times(lam, args.repeat)
    for name, s in rows.items():
        print(f"{name:58s} {s * 1e3:9.1f} {s / BUDGET_S:9.2f} {s / sort_s:9.0f}")


if __name__ == "__main__":
    main()
