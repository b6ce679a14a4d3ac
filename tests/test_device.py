"""Device choice and the GPU out-of-memory fallback."""

import pytest
import torch

from wfviz import device as dv
from wfviz.errors import ResourceError, WfvizError


def test_resolve_cpu_and_auto(monkeypatch):
    assert dv.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dv, "_mps_available", lambda: False)
    assert dv.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(dv, "_mps_available", lambda: True)
    assert dv.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dv.resolve_device("auto") == torch.device("cuda")


def test_missing_gpu_and_bad_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dv, "_mps_available", lambda: False)
    with pytest.raises(WfvizError, match="CUDA"):
        dv.resolve_device("cuda")
    with pytest.raises(WfvizError, match="MPS"):
        dv.resolve_device("mps")
    for bad in ("gpu", "", 3, "auto:"):
        with pytest.raises(WfvizError, match="Unknown device"):
            dv.resolve_device(bad)


def test_label():
    assert dv.device_label("cpu") == f"CPU ({torch.get_num_threads()} thread" + (
        "s)" if torch.get_num_threads() != 1 else ")")


def test_oom_falls_back_to_cpu():
    seen, notices = [], []

    def fn(device):
        seen.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return "done"

    out = dv.run_with_oom_fallback(fn, torch.device("cuda"), notices.append)
    assert out == "done" and seen == ["cuda", "cpu"]
    assert notices == ["GPU out of memory; fell back to the CPU"]


def test_other_errors_are_not_swallowed():
    def fn(device):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape"):
        dv.run_with_oom_fallback(fn, torch.device("mps"), print)
    calls = []
    assert dv.run_with_oom_fallback(lambda d: calls.append(d) or 1, torch.device("cpu")) == 1
    assert len(calls) == 1


def test_mps_runs_float64_work_on_cpu():
    notices = []
    assert dv.float64_device(torch.device("mps"), notices.append) == torch.device("cpu")
    assert notices == [dv.MPS_NOTICE]
    assert dv.float64_device(torch.device("cuda")) == torch.device("cuda")


def test_cpu_out_of_memory_is_one_clear_sentence():
    def fn(d):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                           "memory: you tried to allocate 1644167168 bytes.")

    with pytest.raises(ResourceError, match="ran out of memory") as err:
        dv.run_with_oom_fallback(fn, torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_a_gpu_fallback_that_also_exhausts_the_cpu_says_so():
    notes = []

    def fn(d):
        if d.type == "cpu":
            raise MemoryError()
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ResourceError, match="ran out of memory"):
        dv.run_with_oom_fallback(fn, torch.device("cuda"), notes.append)
    assert notes == [dv.OOM_NOTICE]
