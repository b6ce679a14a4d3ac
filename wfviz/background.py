"""A long job (a sweep) in a worker thread that a user interface polls: progress, ETA, cancel.

A page that runs a sweep in its own script thread can report only when the library calls back,
and can be stopped only there. Run in a :class:`BackgroundRun`, the same sweep leaves the
script thread free to redraw a progress line every fraction of a second (points done, elapsed
time, :func:`eta_seconds`) and to drop the run at once when the user cancels: the worker stops
at the library's next ``cancel()`` poll, and whatever it yielded before stays in
:attr:`BackgroundRun.items`. A run that nobody polls any more (the page was left, the browser
closed) cancels itself after ``orphan_s`` seconds: a user interface cannot always tell a rerun,
which will poll again, from the end of its session. The worker holds a slot of the
process-wide heavy-run gate (:func:`wfviz.jobs.heavy_slot`) while it computes, so that a
cancelled run keeps the slot until it has really stopped.

Plain Python and threads: the library never imports Streamlit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

from .errors import Cancelled
from .jobs import QueueState, SlotInfo, heavy_slot

__all__ = ["BackgroundRun", "RunStatus", "eta_seconds"]

MIN_ETA_FRACTION = 0.02
"""No ETA before this fraction of the work is done: the first percent says little."""


def eta_seconds(elapsed_s: float, fraction: float) -> float | None:
    """Seconds left if the rest goes at the pace so far; None while too little is done.

    Examples
    --------
    >>> eta_seconds(10.0, 0.25)
    30.0
    >>> eta_seconds(10.0, 0.0) is None
    True
    """
    if fraction < MIN_ETA_FRACTION or elapsed_s <= 0:
        return None
    return elapsed_s * (1.0 - min(fraction, 1.0)) / fraction


@dataclass(frozen=True)
class RunStatus:
    """Where a :class:`BackgroundRun` stands.

    Attributes
    ----------
    done, total : int
        Items yielded so far, and expected in all.
    fraction : float
        Best estimate of the share of the work done, 0..1: the larger of ``done / total`` and
        the job's own progress reports, never decreasing.
    message : str
        The job's last progress message.
    elapsed_s : float
        Seconds since the work started (time queued for a heavy slot not counted).
    eta_s : float or None
        :func:`eta_seconds` of ``elapsed_s`` and ``fraction``.
    queue : QueueState or None
        While the run waits for a heavy slot: how many runs are ahead.
    slot : SlotInfo or None
        Once it has the slot: whether and how long it waited.
    finished, cancelled : bool
    error : Exception or None
        What stopped the job, other than a cancel.
    """

    done: int
    total: int
    fraction: float
    message: str
    elapsed_s: float
    eta_s: float | None
    queue: QueueState | None
    slot: SlotInfo | None
    finished: bool
    cancelled: bool
    error: Exception | None


class BackgroundRun:
    """Run ``job(cancel, progress)``, an iterable of items, in a worker thread.

    Parameters
    ----------
    job : callable
        ``job(cancel, progress)`` returning an iterable; ``cancel()`` is True once
        :meth:`cancel` was called, ``progress(fraction, message)`` takes the job's reports
        (the contract of :func:`wfviz.experiments.iter_sweep`).
    total : int
        Items the job will yield.
    heavy : bool
        Hold a slot of :func:`wfviz.jobs.heavy_slot` while the job runs (queueing first).
    limit_threads : bool
        Passed to the heavy slot.
    orphan_s : float, optional
        Cancel the run once :meth:`status` has not been called for this many seconds.

    Examples
    --------
    >>> def job(cancel, progress):
    ...     for i in range(3):
    ...         progress((i + 1) / 3, f"item {i}")
    ...         yield i
    >>> run = BackgroundRun(job, total=3, heavy=False).start()
    >>> run.wait(10), run.items, run.status().done, run.status().fraction
    (True, [0, 1, 2], 3, 1.0)
    """

    def __init__(self, job: Callable[..., Iterable], total: int, *, heavy: bool = True,
                 limit_threads: bool = True, orphan_s: float | None = None) -> None:
        self._job, self._total = job, int(total)
        self._heavy, self._limit_threads = heavy, limit_threads
        self._orphan_s, self._seen = orphan_s, time.monotonic()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._items: list = []
        self._fraction, self._message = 0.0, ""
        self._started: float | None = None
        self._queue: QueueState | None = None
        self._slot: SlotInfo | None = None
        self._cancelled = False
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._main, name="wfviz-background", daemon=True)

    def start(self) -> BackgroundRun:
        """Start the worker; returns ``self``."""
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop; it does at its next ``cancel()`` poll or item."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the worker to end; whether it has."""
        return self._finished.wait(timeout)

    @property
    def items(self) -> list:
        """The items yielded so far (a copy)."""
        with self._lock:
            return list(self._items)

    def status(self) -> RunStatus:
        """A snapshot of the run (which also tells the run that someone is still watching)."""
        with self._lock:
            self._seen = time.monotonic()
            done = len(self._items)
            fraction = max(self._fraction, done / self._total if self._total else 0.0)
            elapsed = time.monotonic() - self._started if self._started is not None else 0.0
            return RunStatus(done=done, total=self._total, fraction=min(fraction, 1.0),
                             message=self._message, elapsed_s=elapsed,
                             eta_s=eta_seconds(elapsed, fraction), queue=self._queue,
                             slot=self._slot, finished=self._finished.is_set(),
                             cancelled=self._cancelled, error=self._error)

    # ------------------------------------------------------------------ worker thread
    def _stop(self) -> bool:
        """The job's ``cancel()``: asked to stop, or nobody has looked for ``orphan_s``."""
        if not self._cancel.is_set() and self._orphan_s is not None:
            with self._lock:
                unseen = time.monotonic() - self._seen
            if unseen > self._orphan_s:
                self._cancel.set()
        return self._cancel.is_set()

    def _progress(self, fraction: float, message: str) -> None:
        with self._lock:
            self._fraction = max(self._fraction, min(max(float(fraction), 0.0), 1.0))
            self._message = str(message)

    def _queued(self, state: QueueState) -> None:
        if self._stop():  # leave the queue
            raise Cancelled("The run was cancelled while it waited for a slot.")
        with self._lock:
            self._queue = state

    def _main(self) -> None:
        slot = (heavy_slot(on_wait=self._queued, limit_threads=self._limit_threads)
                if self._heavy else nullcontext())
        try:
            with slot as info:
                with self._lock:
                    self._queue, self._slot = None, info
                    self._started = time.monotonic()
                for item in self._job(self._stop, self._progress):
                    if self._stop():
                        raise Cancelled("The run was cancelled.")
                    with self._lock:
                        self._items.append(item)
        except Cancelled:
            with self._lock:
                self._cancelled = True
        except Exception as exc:  # handed to the polling thread, which reports it
            with self._lock:
                self._error = exc
        finally:
            self._finished.set()
