"""A classroom of concurrent users against one ``streamlit run app.py`` server (loopback only).

Usage::

    .venv/bin/python benchmarks/bench_classroom.py [--sessions 20] [--seconds 120] [--json F]

It starts ONE server (headless, 127.0.0.1, a free port, ``fileWatcherType none``) on the app's
default source (the bundled SmolLM2 layer, n = 1536, when installed) and opens ``--sessions``
concurrent sessions. Each session arrives within the first few seconds, opens the Waterfilling
page and, for ``--seconds``, moves the R slider to a new random value after a think time of
``--think-min`` to ``--think-max`` seconds. Once, at a random moment in the first 75 % of the
run, it opens the Quantize page, runs one small sweep (``--methods``, one ``--rotation``,
``--points`` rates from ``--rate-lo`` to ``--rate-hi``, ``--rows`` rows) and goes back. The
first ``--long-sweeps`` sessions instead press Run on the page's defaults (the demo sweep:
2 methods × 3 rotations × 5 or 6 rates, 256 rows): the long run that must not freeze the others.

Reported (and written to ``--json``): errors, which must be 0 (``stException`` elements,
``st.error`` boxes, interactions that time out, a websocket that closes, a sweep that ends
without its chart); p50 / p95 / max latency of the interactions (slider moves and page
switches, from sending the change to the end of the server's run, as the browser would see it;
goal p95 ≤ 2 s on the 2-core machine), first page loads and sweeps separately, with the
longest queue a sweep saw (the Quantize page's "N runs ahead of you" message, counted as it
arrives); the RSS of the server process and its children (from ``/proc``): when it has started,
its peak (sampled every 0.25 s) and ``--settle`` s after every session has closed; the CPU
seconds of the server and of this load generator. Everything stops by itself: sessions stop
moving at ``--seconds``, a sweep gives up after ``--sweep-timeout``, an interaction after
``--timeout``, and the whole run after ``--seconds + --sweep-timeout + 60`` seconds; the server
is terminated (then killed) on every exit path. The exit code is 0 when there were no errors and
the p95 goal was met.

Client type: **websocket-level Streamlit clients**, not browser contexts. Each session is one
asyncio websocket on ``/_stcore/stream`` (the ``websockets`` package that Streamlit itself
depends on) that speaks the browser's protocol: ``BackMsg.rerun_script`` with the widget's id,
value, page hash and fragment id, then it reads every ``ForwardMsg`` until ``script_finished``.
The server does the work a browser causes (a slider move reruns only the page's fragment; Run
submits the form's changed values with the button's trigger). Measured on this 2-core machine
before choosing: 5 Playwright contexts in Debian chromium took 25 s to open the Waterfilling
page, about 0.65 GB RSS each, and chromium spent about 6 CPU-s per page load and 0.6 CPU-s per
slider move (drawing Plotly) against the server's 0.16 CPU-s: 20 contexts would need ~13 GB and
would take about four times the CPU the server gets, so the latency would measure chromium, not
the server. The websocket clients of 20 sessions together use a few percent of one core
(reported as ``client CPU``). What they do not measure is the browser's own drawing time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
FINISHED_OK = (0, 3)  # FINISHED_SUCCESSFULLY, FINISHED_FRAGMENT_RUN_SUCCESSFULLY
COMPILE_ERROR = 1
QUEUED_TEXT = "ahead of you"


# --------------------------------------------------------------------------- server and memory
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    with open(log_path, "wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_healthy(port: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the streamlit server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                        timeout=2) as resp:
                if resp.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"the streamlit server was not healthy within {seconds:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, user + system CPU seconds) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (one scan of /proc)."""
    parent = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                parent[int(entry.name)] = stat[0]
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        tree += frontier
    return tree


def tree_rss(root: int) -> int:
    """Resident set size, in bytes, of ``root`` and its descendants."""
    total = 0
    for pid in process_tree(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree_cpu(root: int) -> float:
    return sum((_proc_stat(pid) or (0, 0.0))[1] for pid in process_tree(root))


class MemorySampler(threading.Thread):
    """Samples ``tree_rss(pid)`` every ``interval`` seconds and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.samples = pid, interval, 0, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# --------------------------------------------------------------------------- one session
@dataclass
class Widget:
    id: str
    kind: str
    fragment_id: str
    proto: object


@dataclass
class Stats:
    latency: dict = field(default_factory=lambda: {"slider": [], "page": [], "load": [],
                                                   "sweep": []})
    events: list = field(default_factory=list)  # (kind, start s after t0, latency s)
    errors: list = field(default_factory=list)
    max_ahead: int = 0
    sessions_queued: int = 0
    t0: float = 0.0

    def record(self, kind: str, latency: float) -> None:
        """Keep one latency that ended just now."""
        self.latency[kind].append(latency)
        self.events.append((kind, time.monotonic() - latency - self.t0, latency))


class Session:
    """One websocket client that speaks the Streamlit browser protocol."""

    def __init__(self, n: int, port: int, stats: Stats, timeout: float) -> None:
        self.n, self.port, self.stats, self.timeout = n, port, stats, timeout
        self.ws = None
        self.pages: dict[str, str] = {}  # url path -> page script hash
        self.page_hash = ""
        self.query = ""
        self.widgets: dict[str, Widget] = {}
        self.charts: set[str] = set()
        self.finished: asyncio.Queue[int] = asyncio.Queue()
        self.queued_ahead = 0
        self.closed = False
        self._reader = None

    # -- receiving
    async def connect(self) -> None:
        import websockets

        self.ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/_stcore/stream",
                                           subprotocols=["streamlit"], max_size=None,
                                           open_timeout=self.timeout)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        try:
            async for data in self.ws:
                msg = ForwardMsg()
                msg.ParseFromString(data)
                self._handle(msg)
        except Exception as exc:  # noqa: BLE001  (any close is reported, never raised)
            if not self.closed:
                self.error(f"websocket closed: {type(exc).__name__}: {exc}")
        finally:
            if not self.closed:
                self.error("websocket closed by the server")
            self.closed = True
            self.finished.put_nowait(-1)

    def _handle(self, msg) -> None:
        kind = msg.WhichOneof("type")
        if kind == "delta":
            self._delta(msg.delta)
        elif kind == "script_finished":
            self.finished.put_nowait(int(msg.script_finished))
        elif kind == "new_session":
            self.page_hash = msg.new_session.page_script_hash
        elif kind == "navigation":
            for page in msg.navigation.app_pages:
                if page.url_pathname:
                    self.pages[page.url_pathname] = page.page_script_hash
            if msg.navigation.page_script_hash:
                self.page_hash = msg.navigation.page_script_hash
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string

    def _delta(self, delta) -> None:
        if delta.WhichOneof("type") != "new_element":
            return
        element = delta.new_element
        kind = element.WhichOneof("type")
        proto = getattr(element, kind)
        if kind == "exception":
            self.error(f"stException {proto.type}: {proto.message[:200]}")
        elif kind == "alert":
            if proto.format == 1:  # ERROR
                self.error(f"st.error: {proto.body[:200]}")
            elif QUEUED_TEXT in proto.body:
                ahead = int(proto.body.split()[0]) if proto.body.split()[0].isdigit() else 1
                if not self.queued_ahead:
                    self.stats.sessions_queued += 1
                self.queued_ahead = max(self.queued_ahead, ahead)
                self.stats.max_ahead = max(self.stats.max_ahead, ahead)
        wid = getattr(proto, "id", "")
        if kind == "plotly_chart":
            self.charts.add(wid.rsplit("-", 1)[-1])
        elif wid.startswith("$$ID-") and wid.count("-") >= 2:
            key = wid.split("-", 2)[2]
            self.widgets[key] = Widget(wid, kind, delta.fragment_id, proto)

    def error(self, text: str) -> None:
        self.stats.errors.append(f"session {self.n}: {text}")

    # -- sending
    async def rerun(self, what: str, *, states=(), page: str | None = None,
                    fragment: str = "", timeout: float | None = None) -> float | None:
        """Send one rerun; wait for its end. Returns its latency, or None after an error."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        if self.closed:
            return None
        while not self.finished.empty():
            self.finished.get_nowait()
        msg = BackMsg()
        client = msg.rerun_script
        client.query_string = self.query
        if page is not None and page not in self.pages:
            client.page_name = page  # the first load, by URL path like a browser
        else:
            client.page_script_hash = self.pages[page] if page is not None else self.page_hash
        client.fragment_id = fragment
        for state in states:
            client.widget_states.widgets.append(state)
        if page is not None:
            self.widgets.clear()
            self.charts.clear()
        start = time.monotonic()
        await self.ws.send(msg.SerializeToString())
        deadline = start + (timeout or self.timeout)
        while True:
            try:
                status = await asyncio.wait_for(self.finished.get(),
                                                max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                self.error(f"{what}: no answer within {timeout or self.timeout:.0f} s")
                return None
            if status in FINISHED_OK:
                return time.monotonic() - start
            if status == COMPILE_ERROR:
                self.error(f"{what}: the script did not compile")
                return None
            if status < 0:
                return None  # closed; already counted

    def widget(self, key: str) -> Widget | None:
        widget = self.widgets.get(key)
        if widget is None:
            self.error(f"no widget {key!r} on the page")
        return widget

    async def close(self) -> None:
        self.closed = True
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


def _state(widget: Widget, **value):
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    state = WidgetState(id=widget.id)
    for name, v in value.items():
        if name.endswith("array_value"):
            getattr(state, name).data.extend(v)
        else:
            setattr(state, name, v)
    return state


async def move_slider(s: Session, rng: random.Random) -> None:
    slider = s.widget("wf_rate")
    if slider is None:
        return
    current = list(slider.proto.value) or [slider.proto.default]
    choices = [round(0.05 * k, 2) for k in range(0, 161) if round(0.05 * k, 2) != current[0]]
    value = rng.choice(choices)
    latency = await s.rerun("slider move", states=[_state(slider, double_array_value=[value])],
                            fragment=slider.fragment_id)
    if latency is not None:
        s.stats.record("slider", latency)
        slider.proto.value[:] = [value]


async def open_page(s: Session, path: str) -> bool:
    latency = await s.rerun(f"open {path}", page=path)
    if latency is not None:
        s.stats.record("page", latency)
    return latency is not None


async def run_sweep(s: Session, args, long: bool) -> None:
    if not await open_page(s, "quantize"):
        return
    run = s.widget("q_run")
    if run is None:
        return
    states = [_state(run, trigger_value=True)]
    if not long:
        form = {k: s.widget(k) for k in ("q_methods", "q_rotations", "q_rate_lo", "q_rate_hi",
                                         "q_points", "q_rows")}
        if None in form.values():
            return
        names = [o for o in form["q_rotations"].proto.options
                 if o == args.rotation or o.startswith(args.rotation + " ")]
        if not names:
            s.error(f"rotation {args.rotation!r} is not offered")
            return
        states += [_state(form["q_methods"], string_array_value=args.methods.split(",")),
                   _state(form["q_rotations"], string_array_value=names[:1])]
        states += [_state(form[k], double_value=float(v)) for k, v in
                   (("q_rate_lo", args.rate_lo), ("q_rate_hi", args.rate_hi),
                    ("q_points", args.points), ("q_rows", args.rows))]
    s.queued_ahead = 0
    latency = await s.rerun("quantize sweep", states=states, timeout=args.sweep_timeout)
    if latency is not None:
        s.stats.record("sweep", latency)
        if "q_dr" not in s.charts:
            s.error("the sweep ended without its D-R chart")
    await open_page(s, "waterfilling")


async def session_main(n: int, args, stats: Stats, t0: float) -> None:
    rng = random.Random(args.seed * 1000 + n)
    await asyncio.sleep(rng.uniform(0.0, args.ramp))
    s = Session(n, args.port, stats, args.timeout)
    try:
        try:
            await s.connect()
        except Exception as exc:  # noqa: BLE001
            s.error(f"could not connect: {exc}")
            return
        start = time.monotonic()
        if await s.rerun("first load", page="waterfilling", timeout=args.sweep_timeout) is None:
            return
        stats.record("load", time.monotonic() - start)
        sweep_at = t0 + rng.uniform(0.1, 0.75) * args.seconds
        swept = args.no_sweep
        while time.monotonic() - t0 < args.seconds and not s.closed:
            await asyncio.sleep(rng.uniform(args.think_min, args.think_max))
            if time.monotonic() - t0 >= args.seconds:
                break
            if not swept and time.monotonic() >= sweep_at:
                swept = True
                await run_sweep(s, args, long=n < args.long_sweeps)
            else:
                await move_slider(s, rng)
    finally:
        await s.close()


# --------------------------------------------------------------------------- report
def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_s": quantile(values, 0.50), "p95_s": quantile(values, 0.95),
            "max_s": max(values) if values else float("nan")}


async def drive(args, stats: Stats) -> None:
    t0 = stats.t0 = time.monotonic()
    tasks = [asyncio.create_task(session_main(n, args, stats, t0))
             for n in range(args.sessions)]
    await asyncio.gather(*tasks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="how long each session keeps interacting")
    parser.add_argument("--think-min", type=float, default=2.0)
    parser.add_argument("--think-max", type=float, default=4.0)
    parser.add_argument("--ramp", type=float, default=5.0,
                        help="sessions arrive at random within this many seconds")
    parser.add_argument("--methods", default="gptq-ec,watersic")
    parser.add_argument("--rotation", default="identity")
    parser.add_argument("--rate-lo", type=float, default=3.0)
    parser.add_argument("--rate-hi", type=float, default=4.0)
    parser.add_argument("--points", type=int, default=2)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--long-sweeps", type=int, default=1,
                        help="sessions whose sweep is the page's default demo")
    parser.add_argument("--no-sweep", action="store_true", help="slider moves only")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds before an interaction counts as timed out")
    parser.add_argument("--sweep-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds after the last session closed before the last RSS reading "
                             "(Streamlit keeps a closed session's state for "
                             "server.disconnectedSessionTTL = 120 s)")
    parser.add_argument("--goal-p95", type=float, default=2.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.seconds <= 0 or args.think_min > args.think_max:
        parser.error("need --sessions ≥ 1, --seconds > 0 and --think-min ≤ --think-max")

    args.port = free_port()
    log = Path(tempfile.mkdtemp(prefix="wfviz-classroom-")) / "server.log"
    stats = Stats()
    load_before = os.getloadavg()
    proc = start_server(args.port, log)
    sampler = None
    try:
        wait_healthy(args.port, proc)
        sampler = MemorySampler(proc.pid)
        sampler.start()
        rss_idle = tree_rss(proc.pid)
        cpu0, client0 = tree_cpu(proc.pid), resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.monotonic()
        hard_limit = args.seconds + args.sweep_timeout + 60
        try:
            asyncio.run(asyncio.wait_for(drive(args, stats), hard_limit))
        except TimeoutError:
            stats.errors.append(f"the run did not finish within {hard_limit:.0f} s")
        wall = time.monotonic() - wall0
        client1 = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = tree_cpu(proc.pid) - cpu0
        time.sleep(args.settle)
        rss_after = tree_rss(proc.pid)
        sampler.stop()
        if proc.poll() is not None:
            stats.errors.append(f"the server exited with code {proc.returncode}")
    finally:
        if sampler is not None:
            sampler.stop()
        stop_server(proc)

    interactions = stats.latency["slider"] + stats.latency["page"]
    loaded_at = max((t + lat for kind, t, lat in stats.events if kind == "load"), default=0.0)
    steady = [lat for kind, t, lat in stats.events if kind in ("slider", "page") and t > loaded_at]
    result = {
        "command": "python benchmarks/bench_classroom.py " + " ".join(argv or sys.argv[1:]),
        "sessions": args.sessions, "seconds": args.seconds,
        "think_s": [args.think_min, args.think_max], "cores": os.cpu_count(),
        "heavy_runs_env": os.environ.get("WFVIZ_MAX_HEAVY_RUNS"),
        "errors": len(stats.errors), "error_samples": stats.errors[:10],
        "interactions": summary(interactions),
        "all_loaded_at_s": loaded_at, "steady": summary(steady),
        "slider": summary(stats.latency["slider"]), "page_switch": summary(stats.latency["page"]),
        "first_load": summary(stats.latency["load"]), "sweep": summary(stats.latency["sweep"]),
        "sessions_queued": stats.sessions_queued, "max_runs_ahead": stats.max_ahead,
        "rss_idle_mb": rss_idle / 2**20, "rss_peak_mb": sampler.peak / 2**20,
        "rss_after_mb": rss_after / 2**20, "settle_s": args.settle,
        "memory_samples": sampler.samples,
        "server_cpu_s": server_cpu,
        "client_cpu_s": (client1.ru_utime + client1.ru_stime
                         - client0.ru_utime - client0.ru_stime),
        "wall_s": wall, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "server_log": str(log), "events": stats.events,
    }
    _print(result, args.goal_p95)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = result["errors"] == 0 and result["interactions"]["p95_s"] <= args.goal_p95
    return 0 if ok else 1


def _print(r: dict, goal: float) -> None:
    def row(name: str, s: dict) -> str:
        return (f"| {name} | {s['n']} | {s['p50_s']:.3f} | {s['p95_s']:.3f} | "
                f"{s['max_s']:.3f} |")

    print(f"{r['sessions']} sessions × {r['seconds']:.0f} s, think {r['think_s'][0]:g}–"
          f"{r['think_s'][1]:g} s, {r['cores']} cores, wall {r['wall_s']:.0f} s, load average "
          f"{r['loadavg_before'][0]:.1f} before / {r['loadavg_after'][0]:.1f} after")
    print("| what | count | p50 s | p95 s | max s |\n| --- | --- | --- | --- | --- |")
    for name, key in (("interactions (slider + page switch)", "interactions"),
                      (f"… after all sessions loaded (t > {r['all_loaded_at_s']:.0f} s)",
                       "steady"),
                      ("slider moves", "slider"), ("page switches", "page_switch"),
                      ("first page load", "first_load"), ("quantize sweeps (queue incl.)",
                                                          "sweep")):
        print(row(name, r[key]))
    verdict = "met" if r["interactions"]["p95_s"] <= goal else "MISSED"
    print(f"errors: {r['errors']}; interaction p95 goal ≤ {goal:g} s: {verdict}")
    print(f"sweeps that queued: {r['sessions_queued']}, most runs ahead: {r['max_runs_ahead']}")
    print(f"server RSS: started {r['rss_idle_mb']:.0f} MB, peak {r['rss_peak_mb']:.0f} MB "
          f"({r['memory_samples']} samples), {r['settle_s']:g} s after the sessions closed "
          f"{r['rss_after_mb']:.0f} MB")
    print(f"CPU: server {r['server_cpu_s']:.0f} s, load generator {r['client_cpu_s']:.0f} s")
    for line in r["error_samples"]:
        print("  error:", line)


if __name__ == "__main__":
    sys.exit(main())
