"""Whole-model quantization of a tiny random Llama: every linear, plans, calibrations, cancel."""

import numpy as np
import pytest
import torch

import wfviz
from tests._tiny_llm import one_torch_thread, random_windows, tiny_model  # noqa: F401
from wfviz.collect import collect_statistics
from wfviz.errors import WfvizError
from wfviz.model_eval import evaluate_model
from wfviz.model_quant import (
    FixedRates,
    model_linears,
    one_shot_sigmas,
    quantize_model,
    restore_linears,
    snapshot_linears,
)
from wfviz.quantizers.base import Cancelled

KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def calib():
    return random_windows(256, 128, seed=1)


@pytest.fixture(scope="module")
def evalw():
    return random_windows(256, 128, seed=2)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_every_linear_replaced_and_nothing_else(calib):
    model = tiny_model()
    before = state(model)
    res = quantize_model(model, calib, method="gptq", rate=2)
    after = model.state_dict()
    names = [la.name for la in model_linears(model)]
    assert names[:7] == [f"model.layers.0.{'self_attn' if k[0] in 'qkvo' else 'mlp'}.{k}"
                         for k in KINDS]
    assert [r.name for r in res.layers] == names and len(names) == 14
    assert [r.kind for r in res.layers] == KINDS * 2 and [r.block for r in res.layers] == \
        [0] * 7 + [1] * 7
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        assert changed == (key.removesuffix(".weight") in names), key
    for r in res.layers:
        W = after[f"{r.name}.weight"]
        assert (r.a, r.n) == tuple(W.shape) and r.bits == pytest.approx(r.rate * r.a * r.n)
        assert r.rate_metric == "log_cardinality" and r.target_rate == 2
        assert 0 < r.relative_distortion < 1 and r.predicted_gap_bits >= 0
        assert r.log2_am_d >= r.log2_gm_d and r.weight_var > 0
        # at most 4 distinct levels per row (a 2-bit grid)
        assert max(len(torch.unique(row)) for row in W) <= 4
    assert res.rate == pytest.approx(sum(r.bits for r in res.layers) / res.weights)
    assert res.summary()["rate_label"] == "rate (bits/weight, log-cardinality)"
    assert len(res.to_rows()) == 14 and res.to_rows()[0]["name"] == names[0]


def test_gptq_16_bits_keeps_perplexity(calib, evalw):
    model = tiny_model()
    ref = evaluate_model(model, evalw)
    quantize_model(model, calib, method="gptq", rate=16)
    assert evaluate_model(model, evalw).ppl == pytest.approx(ref.ppl, rel=1e-3)


def test_layer_equals_quantize_in_a_rotated_basis(calib):
    """The model's layer is exactly wfviz.quantize's Ŵ = Ŵ_rot Q for the same Σ_X."""
    model = tiny_model()
    sig = one_shot_sigmas(model, calib)
    W = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    res = quantize_model(model, calib, method="watersic", rate=3.0, rotation="hadamard",
                         sigmas=sig)
    want = wfviz.quantize(W, sig[(1, "down")], method="watersic", rate=3.0, rotation="hadamard")
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, want.W_hat)
    row = res.layers[-1]
    assert row.relative_distortion == pytest.approx(want.relative_distortion)
    assert all(abs(r.rate - 3.0) <= 0.02 for r in res.layers)  # measured rate hits its target
    assert res.rate_metric == "column_entropy"


def test_one_shot_sigmas_cache(calib, tmp_path, monkeypatch):
    model = tiny_model()
    path = tmp_path / "sigma" / "x.npz"
    first = one_shot_sigmas(model, calib, cache_file=path)
    direct = collect_statistics(model, calib, progress=False, products="float32")
    assert path.is_file() and first.tokens == direct.tokens == 256
    import wfviz.model_quant as mq

    monkeypatch.setattr(mq, "collect_statistics", lambda *a, **k: pytest.fail("recollected"))
    again = one_shot_sigmas(model, calib, cache_file=path)
    assert set(again) == set(direct.sigmas)
    for key, sigma in direct.sigmas.items():
        assert np.array_equal(again[key], sigma)


def test_sequential_sigmas_are_the_quantized_models_inputs(calib, monkeypatch):
    """Every group's Σ_X in sequential mode is its input Σ_X in the final quantized model, as
    each group is quantized after everything that feeds it."""
    import wfviz.model_quant as mq

    seen = {}
    original = mq._LayerRunner.group

    def spy(self, group, sigma):
        seen[(group[0].block, group[0].input)] = sigma.clone()
        return original(self, group, sigma)

    monkeypatch.setattr(mq._LayerRunner, "group", spy)
    checks = []
    real_check = mq._AttentionReplay.check

    def check(self, *args):
        real_check(self, *args)
        checks.append(self.usable)

    monkeypatch.setattr(mq._AttentionReplay, "check", check)
    model = tiny_model()
    one_shot = collect_statistics(model, calib, progress=False).sigmas
    res = quantize_model(model, calib, method="gptq", rate=3, calibration="sequential")
    final = collect_statistics(model, calib, progress=False).sigmas
    assert res.calibration == "sequential" and res.calibration_time_s > 0
    assert checks == [True]  # the attention replay matched a real pass, and was checked once
    assert set(seen) == set(final)
    for key, sigma in seen.items():
        np.testing.assert_allclose(sigma.numpy(), final[key], rtol=1e-5,
                                   atol=1e-7 * np.abs(final[key]).max())
    first = one_shot[(0, "qkv")]  # block 0's input is the embedding: nothing quantized yet
    np.testing.assert_allclose(seen[(0, "qkv")].numpy(), first, atol=1e-6 * np.abs(first).max())
    assert not np.allclose(seen[(1, "qkv")].numpy(), one_shot[(1, "qkv")], rtol=1e-3)


def test_plans_and_controllers(calib):
    model = tiny_model()
    names = [la.name for la in model_linears(model)]
    plan = {name: (2.0 if "mlp" in name else 3.0) for name in names}
    res = quantize_model(model, calib, method="rtn", plan=plan)
    assert [r.target_rate for r in res.layers] == [plan[n] for n in names]

    class Greedy(FixedRates):
        def __init__(self):
            self.calls = []

        def next_rate(self, name, weights):
            self.calls.append(("next", name, weights))
            return 3

        def record(self, name, bits):
            self.calls.append(("record", name, bits))

    ctl = Greedy()
    res = quantize_model(tiny_model(), calib, method="rtn", plan=ctl)
    assert [c[1] for c in ctl.calls[::2]] == names and [c[0] for c in ctl.calls[:2]] == \
        ["next", "record"]
    assert [c[2] for c in ctl.calls[1::2]] == [r.bits for r in res.layers]


@pytest.mark.parametrize("kwargs, message", [
    ({"plan": {"model.layers.9.mlp.up_proj": 3}}, "names layer 'model.layers.9.mlp.up_proj'"),
    ({"plan": {"model.layers.0.mlp.up_proj": 3}}, "has no rate for layer"),
    ({"rate": 2.5}, "whole numbers"),
    ({"rate": 3, "rotation": "spin"}, "Unknown rotation"),
    ({"rate": 3, "calibration": "twice"}, "Unknown calibration"),
    ({}, "either a rate or a plan"),
])
def test_bad_requests_change_nothing(calib, kwargs, message):
    model = tiny_model()
    before = state(model)
    with pytest.raises(WfvizError, match=message):
        quantize_model(model, calib, method="gptq", **kwargs)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_copy_snapshot_and_cancel(calib):
    model = tiny_model()
    before = state(model)
    res = quantize_model(model, calib, method="rtn", rate=3, copy=True)
    assert res.model is not model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    snap = snapshot_linears(model)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 5

    for calibration in ("one-shot", "sequential"):
        calls.clear()
        with pytest.raises(Cancelled):
            quantize_model(model, calib, method="gptq", rate=4, calibration=calibration,
                           cancel=cancel)
        assert len(calls) == 6
    restore_linears(model, snap)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_pre_hooks for m in model.modules())
