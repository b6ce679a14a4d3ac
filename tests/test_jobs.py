"""The heavy-run gate: limit, FIFO order, queue positions, release on errors, torch threads."""

import doctest
import subprocess
import sys
import threading
import time

import pytest
from _apptest import no_pages_folder_mode, start  # noqa: F401  (autouse fixture)

from wfviz import jobs
from wfviz.errors import ResourceError, WfvizError
from wfviz.jobs import HeavyGate, HeavyGateTimeout

# integration tests (AppTest, subprocesses, whole models): `make test-fast` leaves them out
pytestmark = pytest.mark.slow


def _wait_until(cond, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def _hold(gate):
    """Hold a slot from another thread until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def body():
        with gate.slot():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=body)
    thread.start()
    assert entered.wait(10)
    return release, thread


def test_module_examples_run():
    assert doctest.testmod(jobs).failed == 0


def test_library_never_imports_streamlit():
    code = "import sys, wfviz.jobs; sys.exit('streamlit' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_limit_holds_under_threads():
    gate = HeavyGate(limit=2, threads=0, poll_s=0.01)
    lock, now, peak, done = threading.Lock(), [0], [0], []

    def work(k):
        with gate.slot():
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            time.sleep(0.02)
            with lock:
                now[0] -= 1
        done.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(done) == list(range(12))
    assert peak[0] == 2
    assert gate.running == 0 and gate.waiting == 0


def test_first_come_first_served_with_positions():
    gate = HeavyGate(limit=1, threads=0, poll_s=0.01)
    release, holder = _hold(gate)
    order, seen, infos = [], {}, {}

    def waiter(k):
        seen[k] = []
        with gate.slot(on_wait=seen[k].append) as info:
            order.append(k)
            infos[k] = info
            time.sleep(0.2)  # long enough for the others to see the queue move

    threads = []
    for k in range(3):
        threads.append(threading.Thread(target=waiter, args=(k,)))
        threads[-1].start()
        _wait_until(lambda k=k: gate.waiting == k + 1)
    time.sleep(0.05)
    release.set()
    for t in [holder, *threads]:
        t.join(10)
    assert order == [0, 1, 2]
    # each waiter was told the runs ahead of it: the holder plus earlier waiters
    assert [seen[k][0].ahead for k in range(3)] == [1, 2, 3]
    assert seen[2][0].running == 1 and seen[2][0].queued_ahead == 2
    aheads = [s.ahead for s in seen[2]]
    assert aheads == sorted(aheads, reverse=True) and len(set(aheads)) > 1  # it moved up
    assert all(infos[k].waited and infos[k].first_ahead == k + 1 for k in range(3))
    assert all(infos[k].wait_s > 0 for k in range(3))


def test_no_wait_reported_when_a_slot_is_free():
    gate = HeavyGate(limit=1, threads=0)
    calls = []
    with gate.slot(on_wait=calls.append) as info:
        assert gate.running == 1
    assert calls == [] and not info.waited and info.wait_s == 0.0 and info.first_ahead == 0


def test_slot_is_released_when_the_body_raises():
    gate = HeavyGate(limit=1, threads=0)
    with pytest.raises(RuntimeError, match="boom"), gate.slot():
        raise RuntimeError("boom")
    assert gate.running == 0
    with gate.slot() as info:
        assert not info.waited


def test_a_waiter_whose_callback_raises_leaves_the_queue():
    gate = HeavyGate(limit=1, threads=0, poll_s=0.01)
    release, holder = _hold(gate)

    class Stop(Exception):
        pass

    def stop(state):
        raise Stop  # like Streamlit's stop request when the user leaves the page

    with pytest.raises(Stop), gate.slot(on_wait=stop):
        pass
    assert gate.waiting == 0 and gate.running == 1
    release.set()
    holder.join(10)
    with gate.slot() as info:
        assert not info.waited


def test_timeout_is_a_wfviz_error_and_cleans_up():
    gate = HeavyGate(limit=1, threads=0, poll_s=0.01)
    release, holder = _hold(gate)
    try:
        with pytest.raises(HeavyGateTimeout, match="still ahead") as err, gate.slot(timeout=0.05):
            pass
        assert isinstance(err.value, ResourceError) and not isinstance(err.value, WfvizError)
        assert gate.waiting == 0
    finally:
        release.set()
        holder.join(10)


def test_limit_and_threads_from_the_environment(monkeypatch):
    monkeypatch.setattr(jobs, "cpu_cores", lambda: 2)
    monkeypatch.delenv(jobs.ENV_LIMIT, raising=False)
    monkeypatch.delenv(jobs.ENV_THREADS, raising=False)
    gate = HeavyGate()
    assert (gate.limit, gate.threads) == (1, 1)  # 2 cores: one run, one torch thread
    monkeypatch.setattr(jobs, "cpu_cores", lambda: 16)
    assert (HeavyGate().limit, HeavyGate().threads) == (4, 3)
    monkeypatch.setenv(jobs.ENV_LIMIT, "3")
    monkeypatch.setenv(jobs.ENV_THREADS, "0")
    gate = HeavyGate()
    assert (gate.limit, gate.threads) == (3, None)
    for bad in ("zero", "0"):
        monkeypatch.setenv(jobs.ENV_LIMIT, bad)
        with pytest.raises(WfvizError, match=jobs.ENV_LIMIT):
            HeavyGate()


def test_process_wide_gate_is_shared_and_replaceable(monkeypatch):
    monkeypatch.setattr(jobs, "_GATE", None)
    assert jobs.heavy_gate() is jobs.heavy_gate()
    gate = jobs.configure_heavy_gate(2, threads=0)
    assert jobs.heavy_gate() is gate and gate.limit == 2
    with jobs.heavy_slot():
        assert gate.running == 1


def test_torch_threads_are_limited_during_heavy_runs_and_restored():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gate = HeavyGate(limit=2, threads=1)
        with gate.slot() as info:
            assert info.threads == 1 and torch.get_num_threads() == 1
            with gate.slot():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1  # another run still holds a slot
        assert torch.get_num_threads() == 2
        with HeavyGate(limit=1, threads=0).slot() as info:
            assert info.threads is None and torch.get_num_threads() == 2
        with HeavyGate(limit=1, threads=1).slot(limit_threads=False) as info:
            assert info.threads is None and torch.get_num_threads() == 2  # a lone session
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_quantize_page_says_it_waited_for_other_runs(monkeypatch):
    gate = HeavyGate(limit=1, threads=0, poll_s=0.05)
    monkeypatch.setattr(jobs, "_GATE", gate)
    at = start(src="synthetic:powerlaw?n=48&seed=0&basis=native&alpha=1.5",
               page="pages/quantize.py")
    at.multiselect(key="q_methods").set_value(["gptq-ec"])
    at.multiselect(key="q_rotations").set_value(["identity (native channels)"])
    at.number_input(key="q_points").set_value(2)
    release, holder = _hold(gate)
    threading.Timer(1.0, release.set).start()
    try:
        at.button(key="q_run").click().run()
    finally:
        release.set()
        holder.join(10)
    assert not at.exception, at.exception
    assert len(at.session_state["q_results"]["rows"]) == 2
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Waited ") and "behind 1 run of other sessions" in c
               for c in captions), captions
    assert gate.running == 0 and gate.waiting == 0
