"""A process-wide, bounded, first-come-first-served gate for heavy work (quantizer sweeps).

One Streamlit server serves every session from one process, and a quantizer sweep keeps the
CPU busy for seconds. :func:`heavy_slot` lets at most ``limit`` such runs go at once, in the
order they asked; the others wait and are told, through ``on_wait``, how many runs are ahead of
them, so that a page can say "2 runs ahead of you; waiting…". While any heavy run holds a slot,
torch's intra-op threads are limited (``threads``), which keeps a core free for the other
sessions' slider moves (and on a small machine a sweep is not slower for it; see
``benchmarks/NOTES.md``).

Configuration, read when the process-wide gate is first used:

``WFVIZ_MAX_HEAVY_RUNS``
    how many heavy runs may go at once (default: 1 on up to 2 cores, else ``min(4, cores // 2)``);
``WFVIZ_HEAVY_THREADS``
    torch intra-op threads while a heavy run is going (default ``max(1, (cores - 1) // limit)``;
    ``0`` leaves torch's setting alone).

This module is plain Python (torch is imported only to set its thread count): the library
never imports Streamlit.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import ResourceError, WfvizError

ENV_LIMIT = "WFVIZ_MAX_HEAVY_RUNS"
"""Environment variable: the number of heavy runs that may go at once."""
ENV_THREADS = "WFVIZ_HEAVY_THREADS"
"""Environment variable: torch intra-op threads while a heavy run goes (0: leave alone)."""
POLL_S = 0.5
"""Longest time between two ``on_wait`` calls of a queued run."""

__all__ = ["ENV_LIMIT", "ENV_THREADS", "POLL_S", "HeavyGate", "HeavyGateTimeout", "QueueState",
           "SlotInfo", "configure_heavy_gate", "cpu_cores", "heavy_gate", "heavy_slot"]


class HeavyGateTimeout(ResourceError):
    """A heavy run waited longer than its ``timeout`` for a free slot."""


@dataclass(frozen=True)
class QueueState:
    """Where a queued run stands, as passed to ``on_wait``.

    Attributes
    ----------
    ahead : int
        Runs that will start before this one: ``running + queued_ahead``.
    running : int
        Heavy runs going now.
    queued_ahead : int
        Runs that asked earlier and still wait.
    waited_s : float
        Seconds this run has waited so far.
    """

    ahead: int
    running: int
    queued_ahead: int
    waited_s: float


@dataclass
class SlotInfo:
    """What :meth:`HeavyGate.slot` yields once the run may start.

    Attributes
    ----------
    waited : bool
        True if the run had to queue.
    wait_s : float
        Seconds spent queued (0.0 when it started at once).
    first_ahead : int
        Runs ahead of it when it joined the queue (0 when it started at once).
    threads : int or None
        Torch intra-op threads during the run (None: torch's setting was left alone).
    """

    waited: bool = False
    wait_s: float = 0.0
    first_ahead: int = 0
    threads: int | None = None


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise WfvizError(f"{name}={raw!r} is not a whole number; set it to an integer "
                         f"≥ {minimum} or unset it.") from None
    if value < minimum:
        raise WfvizError(f"{name}={value} is below {minimum}; set it to an integer ≥ {minimum} "
                         "or unset it.")
    return value


def _default_limit(cores: int) -> int:
    return 1 if cores <= 2 else min(4, cores // 2)


class HeavyGate:
    """At most ``limit`` heavy runs at once, first come first served, with queue positions.

    Parameters
    ----------
    limit : int, optional
        Runs allowed at once (≥ 1). Default: ``WFVIZ_MAX_HEAVY_RUNS``, else 1 on up to 2 cores
        and ``min(4, cores // 2)`` above.
    threads : int, optional
        Torch intra-op threads while at least one run holds a slot; the previous setting comes
        back when the last run leaves. ``0`` leaves torch alone. Default: ``WFVIZ_HEAVY_THREADS``,
        else ``max(1, (cores - 1) // limit)``.
    poll_s : float
        Longest time between two ``on_wait`` calls of a queued run.

    Examples
    --------
    >>> gate = HeavyGate(limit=1, threads=0)
    >>> with gate.slot() as first:
    ...     print(first.waited, gate.running, gate.waiting)
    False 1 0
    >>> import threading
    >>> seen = []
    >>> holder = gate.slot()
    >>> _ = holder.__enter__()                         # another session's run holds the slot
    >>> threading.Timer(0.2, holder.__exit__, (None, None, None)).start()
    >>> with gate.slot(on_wait=seen.append) as info:   # queued until the holder leaves
    ...     print(info.waited, info.first_ahead, f"{seen[0].ahead} run ahead of you; waiting…")
    True 1 1 run ahead of you; waiting…
    >>> gate.running, gate.waiting
    (0, 0)
    """

    def __init__(self, limit: int | None = None, *, threads: int | None = None,
                 poll_s: float = POLL_S) -> None:
        cores = cpu_cores()
        if limit is None:
            limit = _env_int(ENV_LIMIT, _default_limit(cores), 1)
        if int(limit) < 1:
            raise WfvizError(f"The heavy-run limit must be at least 1, not {limit}.")
        self._limit = int(limit)
        if threads is None:
            threads = _env_int(ENV_THREADS, max(1, (cores - 1) // self._limit), 0)
        if int(threads) < 0:
            raise WfvizError(f"Heavy-run threads must be ≥ 0 (0 leaves torch alone), not "
                             f"{threads}.")
        self._threads = int(threads) or None
        self._poll_s = float(poll_s)
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._running = 0
        self._saved_threads: int | None = None

    @property
    def limit(self) -> int:
        """Runs allowed at once."""
        return self._limit

    @property
    def threads(self) -> int | None:
        """Torch intra-op threads during heavy runs (None: left alone)."""
        return self._threads

    @property
    def running(self) -> int:
        """Heavy runs holding a slot now."""
        with self._cond:
            return self._running

    @property
    def waiting(self) -> int:
        """Runs queued for a slot now."""
        with self._cond:
            return len(self._queue)

    def _try_start(self, ticket: object, since: float) -> QueueState | None:
        """Under the lock: start ``ticket`` if a slot is free for it, else say where it stands."""
        pos = self._queue.index(ticket)
        if self._running + pos < self._limit:
            self._queue.remove(ticket)
            self._running += 1
            if self._running == 1 and self._threads is not None:
                self._saved_threads = _torch_threads()
            return None
        return QueueState(ahead=self._running + pos, running=self._running, queued_ahead=pos,
                          waited_s=time.monotonic() - since)

    @contextmanager
    def slot(self, *, on_wait: Callable[[QueueState], None] | None = None,
             timeout: float | None = None, limit_threads: bool = True) -> Iterator[SlotInfo]:
        """Hold one slot for the ``with`` body; queue first if all slots are taken.

        Parameters
        ----------
        on_wait : callable, optional
            Called with a :class:`QueueState` as soon as the run has to queue, then at least every
            ``poll_s`` seconds and after each change of position, from the waiting thread. It may
            raise (for example Streamlit's stop or rerun request, or a cancel): the run then
            leaves the queue and the exception propagates.
        timeout : float, optional
            Give up after this many seconds in the queue with :class:`HeavyGateTimeout`.
        limit_threads : bool
            Apply the gate's thread limit to this run. A caller that knows nobody else is
            using the server (one session) passes False: the run then uses every core.

        Yields
        ------
        SlotInfo
            Whether and how long the run waited. The slot is released when the body ends, also
            by an exception.
        """
        threads = self._threads if limit_threads else None
        ticket, since, info = object(), time.monotonic(), SlotInfo(threads=threads)
        acquired = False
        with self._cond:
            self._queue.append(ticket)
        try:
            last: QueueState | None = None
            while True:
                with self._cond:
                    state = self._try_start(ticket, since)
                    if state is not None and last is not None and state.ahead == last.ahead:
                        self._cond.wait(self._poll_s)
                        state = self._try_start(ticket, since)
                    acquired = state is None
                if acquired:
                    break
                if last is None:
                    info.waited, info.first_ahead = True, state.ahead
                if timeout is not None and state.waited_s >= timeout:
                    raise HeavyGateTimeout(
                        f"{state.ahead} heavy run(s) were still ahead after {timeout:g} s in the "
                        "queue; try again in a minute.")
                if on_wait is not None:
                    on_wait(state)
                last = state
            info.wait_s = time.monotonic() - since if info.waited else 0.0
            if threads is not None:
                _set_torch_threads(threads)
            yield info
        finally:
            with self._cond:
                if acquired:
                    self._running -= 1
                    if self._running == 0 and self._saved_threads is not None:
                        _set_torch_threads(self._saved_threads)
                        self._saved_threads = None
                elif ticket in self._queue:
                    self._queue.remove(ticket)
                self._cond.notify_all()


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


_GATE: HeavyGate | None = None
_GATE_LOCK = threading.Lock()


def heavy_gate() -> HeavyGate:
    """The process-wide gate, created from the environment on first use."""
    global _GATE
    with _GATE_LOCK:
        if _GATE is None:
            _GATE = HeavyGate()
        return _GATE


def configure_heavy_gate(limit: int | None = None, *, threads: int | None = None,
                         poll_s: float = POLL_S) -> HeavyGate:
    """Replace the process-wide gate (runs already holding the old one keep it); returns it."""
    global _GATE
    gate = HeavyGate(limit, threads=threads, poll_s=poll_s)
    with _GATE_LOCK:
        _GATE = gate
    return gate


def heavy_slot(*, on_wait: Callable[[QueueState], None] | None = None,
               timeout: float | None = None, limit_threads: bool = True):
    """``heavy_gate().slot(...)``: hold a slot of the process-wide gate.

    Examples
    --------
    >>> from wfviz.jobs import heavy_slot
    >>> with heavy_slot(on_wait=lambda s: print(f"{s.ahead} runs ahead of you; waiting…")) as s:
    ...     pass                                       # the quantizer sweep goes here
    >>> s.waited
    False
    """
    return heavy_gate().slot(on_wait=on_wait, timeout=timeout, limit_threads=limit_threads)
