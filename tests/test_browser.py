"""Real-browser tests: the Streamlit app in headless Debian chromium, driven by Playwright.

Each page is opened, must draw its Plotly figures without an exception box, and answers one
interaction with a visible change. Screenshots go to ``$SHOT_DIR`` (``make screenshots``) or the
test's temporary directory. Without chromium or playwright the tests skip on a developer
machine and fail when the ``CI`` environment variable is set.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1400, "height": 2400}
TIMEOUT_MS = 120_000  # two shared cores: a cold page with torch imports can take a while

pytestmark = pytest.mark.browser

APP = "[data-testid='stApp']"
PLOT = ".js-plotly-plot .main-svg"
EXCEPTION = "[data-testid='stException']"
METRIC = "[data-testid='stMetricValue']"


def _missing_browser() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chromium():
    missing = _missing_browser()
    if missing and os.environ.get("CI"):
        pytest.fail(f"{missing}; CI must run the browser tests (make chromium)")
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def app_url(chromium, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as resp:
                if resp.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"streamlit did not become healthy:\n{log.read_text()[-3000:]}")


@pytest.fixture
def shot_dir(tmp_path) -> Path:
    out = Path(os.environ["SHOT_DIR"]) if os.environ.get("SHOT_DIR") else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def app_page(chromium, app_url):
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def _wait_idle(page) -> None:
    page.locator(f"{APP}[data-test-connection-state='CONNECTED']").wait_for(state="attached")
    page.locator(f"{APP}[data-test-script-state='notRunning']").wait_for(state="attached")


def _open(page, url: str, *, plot: bool = True) -> None:
    page.goto(url)
    _wait_idle(page)
    if plot:
        page.locator(PLOT).first.wait_for()
    _assert_no_exception(page)


def _assert_no_exception(page) -> None:
    boxes = page.locator(EXCEPTION)
    assert boxes.count() == 0, boxes.first.inner_text()


def _metrics(page) -> list[str]:
    return page.locator(METRIC).all_inner_texts()


def _plots(page) -> list[str]:
    """The SVG markup of every Plotly figure, so that a redraw with new data is seen."""
    return page.locator(".js-plotly-plot .main-svg").evaluate_all(
        "els => els.map(e => e.innerHTML)")


def _main_text(page) -> str:
    return page.locator("[data-testid='stMain']").inner_text()


def _wait_changed(page, read, before, seconds: float = 60):
    """Poll ``read(page)`` until it differs from ``before`` and the script is idle again."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        page.wait_for_timeout(250)
        now = read(page)
        if now != before:
            _wait_idle(page)
            return read(page)
    raise AssertionError(f"nothing changed within {seconds} s: still {before}")


def _shoot(page, shot_dir: Path, name: str) -> None:
    _wait_idle(page)
    page.locator(PLOT).first.wait_for()
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.mouse.move(0, 0)  # no focus ring or hover toolbar in the picture
    page.wait_for_timeout(500)  # let Plotly finish its transition before the screenshot
    page.screenshot(path=str(shot_dir / name))


def _select_option(page, key: str, index: int) -> None:
    """Pick option ``index`` of the selectbox whose widget key is ``key``."""
    page.locator(f".st-key-{key} [role='combobox']").click()
    page.locator("[role='option']").nth(index).click()


def test_covariance_upload_changes_metrics(app_page, app_url, shot_dir, tmp_path):
    _open(app_page, app_url)
    before = _metrics(app_page)
    upload = tmp_path / "sigma24.npy"
    a = np.random.default_rng(7).standard_normal((24, 48))
    np.save(upload, a @ a.T / 48)
    app_page.locator(".st-key-src_kind").get_by_text("Upload", exact=True).click()
    dropzone = app_page.locator(".st-key-src_upload [data-testid='stFileUploaderDropzoneInput']")
    dropzone.set_input_files(str(upload))
    after = _wait_changed(app_page, _metrics, before)
    assert after[0] == "24", after  # the n metric shows the uploaded matrix's size
    app_page.locator(PLOT).first.wait_for()
    _assert_no_exception(app_page)
    _shoot(app_page, shot_dir, "covariance.png")


def test_waterfilling_slider_moves_the_water(app_page, app_url, shot_dir):
    _open(app_page, app_url + "/waterfilling")
    before, plots = _metrics(app_page), _plots(app_page)
    app_page.locator(".st-key-wf_rate input[type=range]").focus()
    for _ in range(10):
        app_page.keyboard.press("ArrowRight")
    after = _wait_changed(app_page, _metrics, before)
    assert after[1] != before[1], (before, after)  # the rate metric
    assert _plots(app_page) != plots
    _assert_no_exception(app_page)
    _shoot(app_page, shot_dir, "waterfilling.png")


def test_layer_stats_heatmap_select(app_page, app_url, shot_dir):
    _open(app_page, app_url + "/layer_stats")
    plots = _plots(app_page)
    _select_option(app_page, "ls_heat", 1)
    _wait_changed(app_page, _plots, plots)
    _assert_no_exception(app_page)
    _shoot(app_page, shot_dir, "layer_stats.png")


def test_quantize_run_button_produces_results(app_page, app_url, shot_dir):
    _open(app_page, app_url + "/quantize", plot=False)  # figures may wait for the first run
    before, plots = _main_text(app_page), _plots(app_page)
    main = app_page.locator("[data-testid='stMain']")
    main.get_by_role("button", name=re.compile(r"\brun\b", re.IGNORECASE)).first.click()
    _wait_changed(app_page, _main_text, before, seconds=240)
    # the status reports the finished sweep and its time; then the results are drawn
    app_page.get_by_text(re.compile(r"Done: \d+ points in [\d.]+ s")).wait_for(timeout=240_000)
    _wait_changed(app_page, _plots, plots, seconds=240)
    app_page.locator(PLOT).first.wait_for()
    _assert_no_exception(app_page)
    _shoot(app_page, shot_dir, "quantize.png")


def test_learn_next_button_advances(app_page, app_url, shot_dir):
    _open(app_page, app_url + "/learn")
    before = _main_text(app_page)
    main = app_page.locator("[data-testid='stMain']")
    main.get_by_role("button", name=re.compile(r"next", re.IGNORECASE)).first.click()
    _wait_changed(app_page, _main_text, before)
    app_page.locator(PLOT).first.wait_for()
    _assert_no_exception(app_page)
    _shoot(app_page, shot_dir, "learn.png")
