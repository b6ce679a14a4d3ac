"""BackgroundRun: items, progress and ETA while a job runs in a worker thread, and cancel."""

import threading
import time

import numpy as np
import pytest

from wfviz.background import BackgroundRun, eta_seconds
from wfviz.errors import Cancelled, WfvizError
from wfviz.experiments import SweepPoint, iter_sweep
from wfviz.jobs import HeavyGate, configure_heavy_gate


def test_eta_is_the_pace_so_far():
    assert eta_seconds(12.0, 0.75) == pytest.approx(4.0)
    assert eta_seconds(5.0, 0.01) is None  # too early to say
    assert eta_seconds(0.0, 0.5) is None
    assert eta_seconds(3.0, 1.0) == 0.0


def _stepper(gate: threading.Event, n: int):
    """A job that yields one item each time ``gate`` is set, polling cancel meanwhile."""
    def job(cancel, progress):
        for i in range(n):
            while not gate.wait(0.01):
                if cancel():
                    raise Cancelled("stop")
            gate.clear()
            progress((i + 0.5) / n, f"step {i}")
            yield i
    return job


def test_status_follows_the_worker_and_the_fraction_never_goes_back():
    gate = threading.Event()
    run = BackgroundRun(_stepper(gate, 4), total=4, heavy=False).start()
    seen = []
    for _ in range(4):
        gate.set()
        deadline = time.monotonic() + 5
        while run.status().done == len(seen) and time.monotonic() < deadline:
            time.sleep(0.005)
        seen.append(run.status())
    assert run.wait(5)
    assert [s.done for s in seen] == [1, 2, 3, 4]
    fractions = [s.fraction for s in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    final = run.status()
    assert final.finished and not final.cancelled and final.error is None
    assert run.items == [0, 1, 2, 3] and final.eta_s == 0.0


def test_cancel_keeps_the_items_so_far_and_stops_the_worker():
    gate = threading.Event()
    run = BackgroundRun(_stepper(gate, 10), total=10, heavy=False).start()
    gate.set()
    while run.status().done < 1:
        time.sleep(0.005)
    start = time.monotonic()
    run.cancel()
    assert run.wait(2) and time.monotonic() - start < 1.0
    status = run.status()
    assert status.cancelled and status.error is None and run.items == [0]


def test_a_run_nobody_watches_cancels_itself():
    def job(cancel, progress):
        yield 1
        while not cancel():
            time.sleep(0.01)
        yield 2  # never kept: the run was cancelled

    run = BackgroundRun(job, total=2, heavy=False, orphan_s=1.5).start()
    watched = time.monotonic()
    while time.monotonic() - watched < 3.0:  # a watcher that keeps polling keeps it going
        assert not run.status().finished
        time.sleep(0.05)
    left = time.monotonic()
    assert run.wait(10)  # then the page is left
    assert 1.4 < time.monotonic() - left < 8.0
    assert run.status().cancelled and run.items == [1]


def test_an_error_is_handed_to_the_poller():
    def job(cancel, progress):
        yield 1
        raise WfvizError("Bad settings; change them.")

    run = BackgroundRun(job, total=3, heavy=False).start()
    assert run.wait(5)
    status = run.status()
    assert isinstance(status.error, WfvizError) and run.items == [1] and not status.cancelled


def test_a_queued_run_reports_its_place_and_leaves_the_queue_on_cancel():
    old = configure_heavy_gate(1, threads=0, poll_s=0.02)
    try:
        holder = old.slot()
        holder.__enter__()  # another session's run
        run = BackgroundRun(lambda cancel, progress: iter([1]), total=1).start()
        deadline = time.monotonic() + 5
        while run.status().queue is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert run.status().queue.ahead == 1 and run.status().done == 0
        run.cancel()
        assert run.wait(2) and run.status().cancelled and old.waiting == 0
        assert run.status().slot is None  # it never started
        holder.__exit__(None, None, None)
        late = BackgroundRun(lambda cancel, progress: iter([1]), total=1)
        holder = old.slot()
        holder.__enter__()
        late.start()
        time.sleep(0.2)
        holder.__exit__(None, None, None)
        assert late.wait(5) and late.items == [1]
        slot = late.status().slot
        assert slot.waited and slot.first_ahead == 1 and slot.wait_s >= 0.1
    finally:
        configure_heavy_gate()
    assert isinstance(old, HeavyGate)


def test_a_cancelled_sweep_stops_at_its_next_poll_and_keeps_finished_points():
    """The real sweep: cancelled while GPTQ-EC searches, after WaterSIC's points came."""
    sigma = np.diag(np.linspace(1.0, 4.0, 32))
    cancelled = threading.Event()

    def job(cancel, progress):
        def held(fraction, message):  # GPTQ-EC waits for the cancel: no race with the test
            progress(fraction, message)
            if message.startswith("GPTQ-EC"):
                cancelled.wait(10)

        return iter_sweep(sigma, methods=["watersic", "gptq-ec"], rotations=["identity"],
                          rates=[2, 3], rows=256, cancel=cancel, progress=held)

    run = BackgroundRun(job, total=4, heavy=False).start()
    deadline = time.monotonic() + 60
    while run.status().done < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    run.cancel()
    cancelled.set()
    assert run.wait(30)
    assert run.status().cancelled and run.status().error is None
    assert [p.method for p in run.items] == ["watersic", "watersic"]
    assert all(isinstance(p, SweepPoint) for p in run.items)
