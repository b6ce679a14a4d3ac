"""Layer sensitivities by noise injection and by the empirical Fisher, on a tiny Llama."""

import math

import pytest
import torch

from tests._tiny_llm import one_torch_thread, tiny_model  # noqa: F401
from wfviz.errors import WfvizError
from wfviz.model_quant import model_linears
from wfviz.sensitivity import fisher_sensitivity, noise_dnll, noise_sensitivity


@pytest.fixture(scope="module")
def trained():
    """The tiny model fitted a little to a periodic sequence: near a minimum of its loss, as a
    trained LM is (a random model's curvature can be negative, which no estimator models)."""
    m = tiny_model().train()
    ids = torch.arange(512) * 7 % 23 + 2
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(40):
        loss = m(input_ids=ids[:256].reshape(2, 128), labels=ids[:256].reshape(2, 128)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.zero_grad()
    m.eval()
    return m, list(ids[256:].split(128))


def ranks(values):
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0] * len(values)
    for r, i in enumerate(order):
        out[i] = r
    return out


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / (n * (n * n - 1))


def test_shapes_positive_and_rank_agreement(trained):
    m, windows = trained
    names = [la.name for la in model_linears(m)]
    fisher = fisher_sensitivity(m, windows)
    noise = noise_sensitivity(m, windows)
    assert list(fisher) == names and list(noise) == names
    assert all(v > 0 and math.isfinite(v) for v in fisher.values())
    assert all(v > 0 and math.isfinite(v) for v in noise.values())
    assert spearman(list(fisher.values()), list(noise.values())) > 0.8
    # no parameter gradient is left behind, and the model's flags are restored
    assert all(p.grad is None for p in m.parameters())
    assert all(p.requires_grad for p in m.parameters())


def test_noise_power_doubles_dnll_doubles(trained):
    m, windows = trained
    name = "model.layers.1.mlp.down_proj"
    one = noise_dnll(m, windows, name, 2e-3)
    two = noise_dnll(m, windows, name, 2e-3 * math.sqrt(2))
    assert one > 0 and two / one == pytest.approx(2.0, rel=0.2)


def test_fisher_units_match_a_quadratic_on_one_output():
    """On the random model, s from the Fisher equals ½‖g‖²/(a·tokens) by hand."""
    m = tiny_model()
    ids = torch.arange(2, 34)
    layer = model_linears(m)[-1]
    grads = []

    def keep_grad(_m, _a, out):
        out.register_hook(lambda g: grads.append(g.detach()))

    handle = layer.module.register_forward_hook(keep_grad)
    logits = m(input_ids=ids[None]).logits[0, :-1]
    torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum").backward()
    handle.remove()
    m.zero_grad()
    want = 0.5 * float(grads[0].double().pow(2).sum()) / (layer.module.out_features * 31)
    got = fisher_sensitivity(m, [ids], layers=[layer.name])[layer.name]
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda m: noise_sensitivity(m, [torch.arange(2, 10)], layers=["nope"]), "'nope'"),
    (lambda m: noise_sensitivity(m, [torch.arange(2, 10)], scale=0), "positive"),
    (lambda m: fisher_sensitivity(m, []), "at least one token window"),
])
def test_bad_input(call, match):
    with pytest.raises(WfvizError, match=match):
        call(tiny_model())
