"""Where torch work runs: device choice, a label for the UI, and the GPU-out-of-memory fallback."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from .errors import ResourceError, WfvizError, notify

DEVICES = ("auto", "cpu", "cuda", "mps")
OOM_NOTICE = "GPU out of memory; fell back to the CPU"
MPS_NOTICE = "MPS has no float64, so this runs on the CPU"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` (or ``"cuda:1"``) or ``"mps"`` into a torch device.

    ``"auto"`` picks CUDA if available, else MPS if available, else the CPU.

    Parameters
    ----------
    device : str or torch.device

    Returns
    -------
    torch.device

    Raises
    ------
    WfvizError
        For an unknown name, or a GPU that is not available.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or device.split(":")[0] not in DEVICES or device == "auto:":
        raise WfvizError(f"Unknown device {device!r}; use one of {', '.join(DEVICES)}.")
    kind = device.split(":")[0]
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise WfvizError("CUDA was requested but no CUDA GPU is available to torch; use "
                         "--device cpu or auto.")
    if kind == "mps" and not _mps_available():
        raise WfvizError("MPS was requested but it is not available; use --device cpu or auto.")
    return torch.device(device)


def device_label(device: str | torch.device = "auto") -> str:
    """A short human label for where the work runs, e.g. ``"CPU (2 threads)"`` or a GPU name.

    Examples
    --------
    >>> device_label("cpu").startswith("CPU (")
    True
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple GPU (MPS)"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads != 1 else ''})"


def float64_device(device: torch.device, notice: Callable[[str], None] | None = None):
    """``device``, or the CPU when it is Apple's MPS, which has no float64 arithmetic.

    The quantizers factorize Σ and measure distortions in float64.

    Examples
    --------
    >>> float64_device(torch.device("cpu"))
    device(type='cpu')
    """
    if device.type != "mps":
        return device
    notify(MPS_NOTICE, notice)
    return torch.device("cpu")


_OOM_TEXTS = ("out of memory", "not enough memory", "can't allocate memory")


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, (oom, MemoryError)) or (
        isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXTS))


@contextlib.contextmanager
def forward_oom_as_error():
    """Turn running out of memory inside (a model's forward passes) into one ResourceError.

    Examples
    --------
    >>> with forward_oom_as_error():
    ...     raise MemoryError()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    wfviz.errors.ResourceError: The model's forward pass ran out of memory; ...
    """
    try:
        yield
    except Exception as exc:
        if _is_oom(exc):
            raise ResourceError("The model's forward pass ran out of memory; use --device cpu, "
                                "a shorter --seq-len, or fewer tokens.") from exc
        raise


def _cpu_oom_error() -> ResourceError:
    return ResourceError("The CPU ran out of memory for this run (an n×n float64 matrix takes "
                      "8·n² bytes, and a sweep holds about four); use fewer rows or rotations, "
                      "a smaller Σ, or a machine with more memory.")


def run_with_oom_fallback(fn: Callable[[torch.device], object], device: torch.device,
                          notice: Callable[[str], None] | None = None):
    """Run ``fn(device)``; if a GPU runs out of memory, run ``fn(cpu)`` instead.

    Parameters
    ----------
    fn : callable
        Takes the torch device to compute on.
    device : torch.device
        The device to try first; on the CPU no fallback is attempted.
    notice : callable, optional
        Called with ``"GPU out of memory; fell back to the CPU"`` when falling back.

    Returns
    -------
    Whatever ``fn`` returns.

    Raises
    ------
    ResourceError
        When the CPU (first choice or fallback) runs out of memory, in one sentence.

    Examples
    --------
    >>> run_with_oom_fallback(lambda d: d.type, torch.device("cpu"))
    'cpu'
    """
    def once(d, done):
        yield "result", fn(d)

    for _, value in iter_with_oom_fallback(once, device, notice):
        return value


def iter_with_oom_fallback(fn: Callable, device: torch.device,
                           notice: Callable[[str], None] | None = None):
    """Yield ``(key, value)`` pairs of the generator ``fn(device, done)``, falling back to the
    CPU when a GPU runs out of memory.

    ``done`` is the set of keys already yielded: after a fallback, ``fn(cpu, done)`` is asked
    to skip them, so no finished piece of work is computed or yielded twice.

    Examples
    --------
    >>> def work(d, done):
    ...     for k in ("a", "b"):
    ...         if k not in done:
    ...             yield k, d.type
    >>> list(iter_with_oom_fallback(work, torch.device("cpu")))
    [('a', 'cpu'), ('b', 'cpu')]
    """
    done: set = set()
    if device.type != "cpu":
        try:
            for key, value in fn(device, done):
                done.add(key)
                yield key, value
            return
        except Exception as exc:
            if not _is_oom(exc):
                raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        notify(OOM_NOTICE, notice)
    try:
        for key, value in fn(torch.device("cpu"), done):
            done.add(key)
            yield key, value
    except Exception as exc:
        if _is_oom(exc):
            raise _cpu_oom_error() from exc
        raise
