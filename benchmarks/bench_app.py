"""Server time of the Streamlit app: page loads, a Waterfilling slider move at large n, and the
default Quantize demo.

Usage: ``.venv/bin/python benchmarks/bench_app.py [--n 14336] [--repeat 5] [--browser]``

Script (server) time, through ``streamlit.testing.v1.AppTest`` in this process:

* first load with cold caches: the default source (the bundled SmolLM2 layer, block 15
  down_proj input, n = 1536) is loaded and its statistics computed, and the Covariance page
  drawn; then warm reruns of the Covariance and Waterfilling pages;
* a Waterfilling slider move on an uploaded eigenvalues-only spectrum of size ``n``
  (Llama-3-8B's down_proj input has n = 14336), two ways: ``fragment`` is the work the page's
  ``@st.fragment`` does per move (solve the waterfilling, build the five figures, serialise them
  to JSON as ``st.plotly_chart`` does), timed directly; ``AppTest rerun`` is a full scripted
  rerun (sidebar, page and fragment; a browser reruns only the fragment, so this is an upper
  bound);
* the default Quantize demo (Run with the form's defaults on the default source): the first
  run in the process, then a second (Haar matrices and thread pools warm).

``--browser`` adds what a user waits for in headless Debian chromium (Playwright, loopback
only): a fresh server's first page load until Plotly has drawn, a second session's load (warm
caches), and a slider move at ``n`` from the key press until the metrics change.

Each time is printed with its ratio to the 300 ms budget and to the cost of one sort of the
spectrum measured in the same run, so numbers from a busy machine can be compared.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pages._ui import RATE_AXIS  # noqa: E402
from wfviz.plots import (  # noqa: E402
    cholesky_figure,
    column_rates_figure,
    dr_curve_figure,
    rates_figure,
    vessel_figure,
)
from wfviz.theory import highrate_it_distortion  # noqa: E402
from wfviz.waterfilling import distortion_rate_curve, reverse_waterfill  # noqa: E402

BUDGET_S = 0.300
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


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


def _spectrum_bytes(lam: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, lam)
    return buf.getvalue()


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
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    out = {"first load (cold caches, default source)": median_time(at.run, 1)}
    source = at.session_state["wfviz_source"]
    out["rerun, covariance page (warm)"] = median_time(at.run, repeat)
    at.switch_page("pages/waterfilling.py").run()
    out["rerun, waterfilling page (warm, default source)"] = median_time(at.run, repeat)

    at.switch_page("pages/quantize.py").run()
    demo = median_time(lambda: at.button(key="q_run").click().run(), 1)
    assert not at.exception, at.exception
    points = len(at.session_state["q_results"]["rows"])
    out[f"default Quantize demo ({points} points, incl. charts), first run"] = demo
    again = median_time(lambda: at.button(key="q_run").click().run(), 1)
    out[f"default Quantize demo ({points} points, incl. charts), run again"] = again

    at.switch_page("pages/waterfilling.py").run()
    at.radio(key="src_kind").set_value("uploaded").run()
    at.file_uploader(key="src_upload").set_value(("lam.npy", _spectrum_bytes(lam), "x")).run()
    assert not at.exception, at.exception
    rates = iter(np.linspace(1.0, 4.0, repeat + 1))
    out[f"slider move, AppTest rerun, n={lam.size}"] = median_time(
        lambda: at.slider(key="wf_rate").set_value(round(float(next(rates)), 2)).run(), repeat)
    assert not at.exception, at.exception
    shown = {m.label: m.value for m in at.metric}
    assert shown["zero-rate coordinates"].endswith(f"of {lam.size:,}"), shown
    assert shown["rate R"] == f"{at.slider(key='wf_rate').value:.3f} bits", shown
    print(f"default source: {source}")
    return out


# --------------------------------------------------------------------------- real browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(360):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                        timeout=2) as resp:
                if resp.read() == b"ok":
                    return proc
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("streamlit did not become healthy")


def _idle(page) -> None:
    app = "[data-testid='stApp']"
    page.locator(f"{app}[data-test-connection-state='CONNECTED']").wait_for(state="attached")
    page.locator(f"{app}[data-test-script-state='notRunning']").wait_for(state="attached")


def _load(browser, url: str) -> float:
    """Seconds from navigation until the page is idle and Plotly has drawn."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(300_000)
    start = time.perf_counter()
    page.goto(url)
    _idle(page)
    page.locator(".js-plotly-plot .main-svg").first.wait_for()
    elapsed = time.perf_counter() - start
    context.close()
    return elapsed


def _slider_moves(browser, url: str, lam: np.ndarray, repeat: int) -> float:
    """Median seconds from an arrow-key press on the rate slider until the metrics change."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(300_000)
    page.goto(url + "/waterfilling")
    _idle(page)
    page.locator(".st-key-src_kind").get_by_text("Upload", exact=True).click()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lam.npy"
        path.write_bytes(_spectrum_bytes(lam))
        page.locator(".st-key-src_upload [data-testid='stFileUploaderDropzoneInput']"
                     ).set_input_files(str(path))
        metric = page.locator("[data-testid='stMetricValue']").nth(3)  # zero-rate coordinates
        metric.filter(has_text=f"of {lam.size:,}").wait_for()
    _idle(page)
    rate = page.locator("[data-testid='stMetricValue']").nth(1)
    slider = page.locator(".st-key-wf_rate input[type=range]")
    times = []
    for _ in range(repeat):
        before = rate.inner_text()
        slider.focus()
        start = time.perf_counter()
        page.keyboard.press("ArrowRight")
        while rate.inner_text() == before:
            page.wait_for_timeout(5)
        times.append(time.perf_counter() - start)
        _idle(page)
    context.close()
    return statistics.median(times)


DEMO_POINTS = 36  # 2 methods × 3 rotations × 6 rates, the form's defaults


def _demo_runs(browser, url: str) -> list[tuple[float, float]]:
    """Seconds from a click on Run (the form's defaults) until the status reads Done and the
    results' charts are drawn, and the sweep's own seconds that the status reports: the first
    run of a fresh server process, then a second."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(300_000)
    page.goto(url + "/quantize")
    _idle(page)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        page.locator(".st-key-q_run button").click()
        page.locator("[data-testid='stApp'][data-test-script-state='running']").wait_for(
            state="attached")
        _idle(page)
        done = page.get_by_text(f"Done: {DEMO_POINTS} points")
        done.wait_for()
        page.locator(".js-plotly-plot .main-svg").first.wait_for()
        elapsed = time.perf_counter() - start
        sweep_s = float(done.inner_text().split(" in ")[1].rstrip(" s"))
        times.append((elapsed, sweep_s))
        # let chromium finish drawing every chart before the next run (same 2 cores)
        page.wait_for_function("() => { const p = document.querySelectorAll('.js-plotly-plot');"
                               " return p.length > 0 && [...p].every(e => e.querySelector("
                               "'.main-svg')); }")
        page.wait_for_timeout(2000)
    context.close()
    return times


def browser_times(lam: np.ndarray, repeat: int) -> dict:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = _server(port, log)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
                out = {"browser: first load, fresh server (default source)": _load(browser, url)}
                out["browser: load in a new session (warm caches)"] = statistics.median(
                    [_load(browser, url) for _ in range(max(1, repeat // 2))])
                out[f"browser: slider move, key press to new metrics, n={lam.size}"] = \
                    _slider_moves(browser, url, lam, repeat)
                runs = zip(_demo_runs(browser, url), ("first", "again"), strict=True)
                for (wall, sweep_s), which in runs:
                    out[f"browser: default Quantize demo, click Run to charts, {which}"] = wall
                    out[f"browser:   of which the sweep on the server, {which}"] = sweep_s
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=14336)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--browser", action="store_true",
                        help="also time page loads and a slider move in headless chromium")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    lam = np.sort(rng.pareto(1.5, args.n) + 1e-3)[::-1]
    sort_s = median_time(lambda: np.sort(lam), args.repeat)
    curve = (np.linspace(0, 8, 161), distortion_rate_curve(lam, np.linspace(0, 8, 161)),
             highrate_it_distortion(lam, np.linspace(0, 8, 161)))
    sent = fragment_work(lam, 2.0, curve)
    frag_s = median_time(lambda: fragment_work(lam, 2.0, curve), args.repeat)
    rows = {f"slider move, fragment work, n={args.n} ({sent / 1e3:.0f} kB JSON)": frag_s}
    rows |= apptest_times(lam, args.repeat)
    if args.browser:
        rows |= browser_times(lam, args.repeat)
    print(f"n = {args.n}, median of {args.repeat}; one np.sort of the spectrum: "
          f"{sort_s * 1e3:.2f} ms; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"{'measurement':66s} {'ms':>9s} {'/ budget':>9s} {'/ sort':>9s}")
    for name, s in rows.items():
        print(f"{name:66s} {s * 1e3:9.1f} {s / BUDGET_S:9.2f} {s / sort_s:9.0f}")


if __name__ == "__main__":
    main()
