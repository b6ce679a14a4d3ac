"""Figures of a bit allocation: the vessel of layers, the bars, the heatmap."""

import numpy as np
import pytest

from wfviz.allocation import LayerCost, allocate, heuristic_plan, uniform_plan
from wfviz.plots import layer_vessel_figure, plan_bars_figure, plan_heatmap_figure

KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def layers(blocks=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for b in range(blocks):
        for kind in KINDS:
            part = "self_attn" if kind in ("q", "k", "v", "o") else "mlp"
            g = float(rng.normal(0, 2))
            out.append(LayerCost(f"model.layers.{b}.{part}.{kind}_proj", b, kind,
                                 int(rng.integers(100, 1000)), 1e-3, g, g + 1,
                                 float(rng.lognormal(0, 1))))
    return out


def trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_vessel_sorted_with_water_at_theta():
    ls = layers()
    plan = allocate(ls, 3.0, min_rate=0, max_rate=16)
    fig = layer_vessel_figure(plan, ls)
    vessel, water = trace(fig, "s·κ (vessel)"), trace(fig, "s·D (water)")
    v = np.asarray(vessel.y, dtype=float)
    assert np.all(np.diff(v) <= 0)  # largest s·κ first
    # high-rate, no bound active: every layer's water is exactly θ
    assert np.allclose(np.asarray(water.y, dtype=float), plan.theta, rtol=1e-6)
    assert fig.layout.shapes[0].y0 == pytest.approx(plan.theta)
    assert fig.layout.yaxis.type == "log"
    # hover names the layer, and the layer with the largest s·κ gets the most bits
    names = list(vessel.customdata[:, 0])
    assert sorted(names) == sorted(la.name for la in ls)
    assert plan.rates[names[0]] == max(plan.rates.values())


def test_vessel_changes_with_the_budget_and_shows_layers_under_water():
    ls = layers()
    low, high = (allocate(ls, b, min_rate=0, max_rate=16) for b in (0.5, 4.0))
    f_low, f_high = layer_vessel_figure(low, ls), layer_vessel_figure(high, ls)
    assert f_low.layout.shapes[0].y0 > f_high.layout.shapes[0].y0  # less water, more bits
    # at 0.5 bits some layers get nothing: their water fills the whole bar (s·D = s·κ)
    zero = [i for i, n in enumerate(trace(f_low, "s·κ (vessel)").customdata[:, 0])
            if low.rates[n] == 0]
    assert zero
    v, w = (np.asarray(trace(f_low, n).y, dtype=float) for n in ("s·κ (vessel)", "s·D (water)"))
    assert np.allclose(w[zero], v[zero])


def test_bars_in_processing_order_with_the_budget():
    ls = layers()
    plan = allocate(ls, 3.0, min_rate=1, max_rate=8)
    fig = plan_bars_figure(plan, ls)
    assert [t.name for t in fig.data] == list(KINDS)
    xs = sorted((x, y) for t in fig.data for x, y in zip(t.x, t.y, strict=True))
    assert [y for _, y in xs] == pytest.approx(list(plan.rates.values()))
    assert fig.layout.shapes[0].y0 == 3.0
    assert trace(fig, "down").customdata[0] == "model.layers.0.mlp.down_proj"
    # without LayerCosts the names are parsed
    assert [t.name for t in plan_bars_figure(plan).data] == list(KINDS)


def test_heatmap_blocks_by_kinds():
    ls = layers()
    plan = heuristic_plan(ls, 3.0)
    fig = plan_heatmap_figure(plan)
    heat = fig.data[0]
    assert list(heat.x) == list(KINDS) and list(heat.y) == [0, 1, 2]
    z = np.asarray(heat.z, dtype=float)
    assert z[0, KINDS.index("v")] == pytest.approx(plan.rates["model.layers.0.self_attn.v_proj"])
    assert z[1, KINDS.index("q")] == pytest.approx(plan.rates["model.layers.1.self_attn.q_proj"])
    # a uniform plan is one colour
    flat = np.asarray(plan_heatmap_figure(uniform_plan(ls, 2.0)).data[0].z, dtype=float)
    assert np.all(flat == 2.0)
