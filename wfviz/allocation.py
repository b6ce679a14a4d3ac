"""A model's bit budget split over its layers: reverse waterfilling across layers.

Each quantized linear ``l`` has ``m_l = a_l·n_l`` weights and a cost curve ``D_l(R)``, the
output distortion per weight ``tr(EΣ_XEᵀ)/(a·n)`` at ``R`` bits per weight. The loss is modelled
as ``ΔNLL ≈ Σ_l s_l m_l D_l(R_l)`` with ``s_l`` the loss's sensitivity to output-error energy in
layer ``l`` (:mod:`wfviz.sensitivity`; 1 when unknown). :func:`allocate` minimises it under
``Σ m_l R_l = budget · Σ m_l``: every layer strictly inside ``[min_rate, max_rate]`` ends at the
same slope ``s_l D_l'(R_l) = −2 ln2 · θ`` (θ, the water level, in the units of ``s·D``).

Cost models (``cost=``):

- ``"high-rate"``: ``D_l(R) = κ_l 2^{−2R}`` with ``κ_l = (2πe/12)·σ²_W·GM(d_l)`` for WaterSIC
  and the same with ``AM(d_l)`` for GPTQ-EC (``d_l`` the Cholesky diagonal of the layer's
  rotated Σ_X in GPTQ's order); then ``R_l = clip(½ log2(s_l κ_l / θ))``, closed form.
- ``"measured"``: a few measured points ``(R, D)`` per layer (:func:`measured_costs`),
  joined piecewise linearly in ``log2 D`` after taking the lower convex hull (so ``D`` is
  decreasing and convex; the end segments are extended beyond the measured range).

Either way θ is found by bisection until the weighted mean rate equals the budget (to far below
0.001 bit per weight). See ``docs/allocation.md`` and ``docs/theory.md`` §9.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import WfvizError

COSTS = ("high-rate", "measured")
ALLOC_METHODS = ("watersic", "gptq-ec")
PLAN_FORMAT = "wfviz-rate-plan"
PLAN_VERSION = 1
KIND_SHORT = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
              "up_proj": "up", "down_proj": "down"}
_LN2 = math.log(2.0)
_BISECTIONS = 200  # on log2 θ: each halves the bracket, far past float64's resolution of R


@dataclass(frozen=True)
class LayerCost:
    """What the allocation needs to know about one quantized linear layer.

    Attributes
    ----------
    name : str
        Full module name, as :func:`wfviz.model_quant.model_linears` gives it.
    block : int
    kind : str
        ``q``, ``k``, ``v``, ``o``, ``gate``, ``up`` or ``down``.
    weights : int
        ``a·n``.
    sigma_w2 : float
        Mean square weight ``‖W‖²/(a·n)``.
    log2_gm_d, log2_am_d : float
        ``log2`` of the geometric and arithmetic means of the Cholesky diagonal of the layer's
        (rotated) Σ_X, GPTQ's column order (the GM is the same in every order).
    sensitivity : float
        ``s_l``: ΔNLL per token per unit of output-error energy per token (1: pure layer MSE).
    curve_rates, curve_distortions : tuple of float
        Measured points ``(R, D(R))`` for ``cost="measured"`` (distortion per weight).

    Examples
    --------
    >>> c = LayerCost("l0", 0, "q", 100, 1.0, 0.0, 1.0)
    >>> round(c.kappa("watersic"), 4), round(c.kappa("gptq-ec"), 4)
    (1.4233, 2.8466)
    """

    name: str
    block: int
    kind: str
    weights: int
    sigma_w2: float
    log2_gm_d: float
    log2_am_d: float
    sensitivity: float = 1.0
    curve_rates: tuple = ()
    curve_distortions: tuple = ()

    def kappa(self, method: str) -> float:
        """``κ`` of the high-rate model ``D(R) = κ 2^{−2R}``."""
        from .theory import SPACE_FILLING_LOSS

        log2_d = self.log2_gm_d if _method(method) == "watersic" else self.log2_am_d
        return SPACE_FILLING_LOSS * self.sigma_w2 * 2.0 ** log2_d

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "curve_rates": list(self.curve_rates),
                "curve_distortions": list(self.curve_distortions)}


def _method(method: str) -> str:
    if method not in ALLOC_METHODS:
        raise WfvizError(f"Unknown allocation method {method!r}; use watersic or gptq-ec.")
    return method


# ---------------------------------------------------------------------------------------------
# Cost curves: D(R), and the rate that minimises s·D(R) + 2ln2·θ·R


class _HighRate:
    def __init__(self, kappa: float):
        self.kappa = kappa

    def distortion(self, rate):
        return self.kappa * np.exp2(-2.0 * np.asarray(rate, dtype=float))

    def best_rate(self, s: float, theta: float) -> float:
        if s * self.kappa <= 0:
            return -math.inf
        return 0.5 * math.log2(s * self.kappa / theta)


class _Measured:
    """``log2 D`` piecewise linear through the lower convex hull of the measured points."""

    def __init__(self, rates, distortions, name: str):
        r = np.asarray(rates, dtype=float)
        d = np.asarray(distortions, dtype=float)
        if r.size == 0 or r.size != d.size or not (np.all(np.isfinite(r))
                                                    and np.all(np.isfinite(d)) and np.all(d > 0)):
            raise WfvizError(f"Layer {name} has no usable measured cost curve (give positive, "
                             "finite distortions at one or more rates, e.g. measured_costs).")
        order = np.argsort(r)
        r, y = r[order], np.log2(d[order])
        keep = y < np.minimum.accumulate(np.r_[np.inf, y[:-1]])  # decreasing: drop noisy rises
        self.r, self.y = _lower_hull(r[keep], y[keep])
        # one point: the high-rate slope; otherwise the end segments extended outwards
        self.b = np.diff(self.y) / np.diff(self.r) if self.r.size > 1 else np.array([-2.0])

    def _segment(self, rate):
        return np.clip(np.searchsorted(self.r, rate, side="right") - 1, 0, self.b.size - 1)

    def distortion(self, rate):
        rate = np.asarray(rate, dtype=float)
        k = self._segment(rate)
        return np.exp2(self.y[k] + self.b[k] * (rate - self.r[k]))

    def best_rate(self, s: float, theta: float) -> float:
        if s <= 0:
            return -math.inf
        # on segment k, d/dR [s·D] = s·b_k·ln2·D; equal to −2ln2·θ where D = 2θ/(s|b_k|)
        lo = np.r_[-np.inf, self.r[1:-1]] if self.b.size > 1 else np.array([-np.inf])
        hi = np.r_[self.r[1:-1], np.inf] if self.b.size > 1 else np.array([np.inf])
        start = self.r[: self.b.size]
        target = np.log2(2.0 * theta / (s * np.abs(self.b)))
        cand = np.clip(start + (target - self.y[: self.b.size]) / self.b, lo, hi)
        objective = s * self.distortion(cand) + 2.0 * _LN2 * theta * cand
        return float(cand[np.argmin(objective)])  # convex: the least candidate is the optimum


def _lower_hull(r: np.ndarray, y: np.ndarray):
    """Lower convex hull of points sorted by ``r`` (monotone chain)."""
    keep: list[int] = []
    for i in range(r.size):
        while len(keep) >= 2:
            a, b = keep[-2], keep[-1]
            # drop b when it lies on or above the chord a → i
            if (y[b] - y[a]) * (r[i] - r[a]) >= (y[i] - y[a]) * (r[b] - r[a]):
                keep.pop()
            else:
                break
        keep.append(i)
    return r[keep], y[keep]


def _curves(layers, cost: str, method: str) -> list:
    if cost not in COSTS:
        raise WfvizError(f"Unknown cost model {cost!r}; use high-rate or measured.")
    if cost == "measured":
        return [_Measured(la.curve_rates, la.curve_distortions, la.name) for la in layers]
    curves = []
    for la in layers:
        kappa = la.kappa(method)
        if not (math.isfinite(kappa) and kappa >= 0):
            raise WfvizError(f"Layer {la.name} has no finite high-rate cost (σ²_W {la.sigma_w2}, "
                             "log2 GM/AM of d); check its Σ_X, or use cost='measured'.")
        curves.append(_HighRate(kappa))
    return curves


# ---------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class RatePlan:
    """Target rates per layer, with what the cost model predicts for them.

    Attributes
    ----------
    rates : dict
        Layer name → bits per weight, in processing order.
    weights : dict
        Layer name → ``a·n``.
    theta : float
        The water level θ (``s_l D_l = θ`` for high-rate layers strictly inside the bounds);
        NaN for plans not found by waterfilling.
    budget, average : float
        The requested and the achieved weighted mean rate.
    predicted_dnll, uniform_dnll : float
        ``Σ s_l m_l D_l(R_l)`` of this plan and of every layer at ``budget`` (nats per token).
    cost, method, sensitivity : str
        Cost model, method of the cost model, name of the sensitivities used.
    plan : str
        ``waterfilling``, ``uniform`` or ``heuristic``.
    model : str or None
        Label of the model the plan was made for.
    model_fingerprint : dict or None
        Its file hashes (or id and revision): :func:`wfviz.model_cache.model_fingerprint`.

    Examples
    --------
    >>> p = uniform_plan([LayerCost("a", 0, "q", 10, 1.0, 0.0, 0.0)], 3.0)
    >>> RatePlan.from_json(p.to_json()) == p
    True
    """

    rates: dict
    weights: dict
    theta: float
    budget: float
    average: float
    predicted_dnll: float
    uniform_dnll: float
    cost: str
    method: str
    sensitivity: str
    plan: str = "waterfilling"
    model: str | None = None
    model_fingerprint: dict | None = field(default=None)

    def to_json(self) -> str:
        """The plan as JSON: ``wfviz quantize-model --plan`` reads its ``rates``."""
        doc = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "plan": self.plan,
               "model": self.model, "model_fingerprint": self.model_fingerprint,
               "budget": self.budget, "average": self.average,
               "theta": self.theta if math.isfinite(self.theta) else None,
               "predicted_dnll": self.predicted_dnll, "uniform_dnll": self.uniform_dnll,
               "cost": self.cost, "method": self.method, "sensitivity": self.sensitivity,
               "units": {"rates": "bits per weight", "dnll": "nats per token, predicted",
                         "theta": "s·D at the water level"},
               "rates": self.rates, "weights": self.weights}
        return json.dumps(doc, indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> RatePlan:
        """Read :meth:`to_json`'s output.

        Raises
        ------
        WfvizError
            Not JSON, not a wfviz rate plan, or a newer version.
        """
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise WfvizError("The rate plan is not valid JSON; write it with "
                             "RatePlan.to_json or wfviz allocate.") from exc
        if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
            raise WfvizError(f"This JSON is not a wfviz rate plan (no \"format\": "
                             f"\"{PLAN_FORMAT}\"); write it with wfviz allocate.")
        if doc.get("version", 0) > PLAN_VERSION:
            raise WfvizError(f"The rate plan has version {doc.get('version')}, newer than this "
                             f"wfviz reads ({PLAN_VERSION}); upgrade wfviz.")
        theta = doc.get("theta")
        return cls(rates={k: float(v) for k, v in doc["rates"].items()},
                   weights={k: int(v) for k, v in doc["weights"].items()},
                   theta=math.nan if theta is None else float(theta),
                   budget=float(doc["budget"]), average=float(doc["average"]),
                   predicted_dnll=float(doc["predicted_dnll"]),
                   uniform_dnll=float(doc["uniform_dnll"]), cost=doc["cost"],
                   method=doc["method"], sensitivity=doc["sensitivity"],
                   plan=doc.get("plan", "waterfilling"), model=doc.get("model"),
                   model_fingerprint=doc.get("model_fingerprint"))


def _check_layers(layers) -> list:
    layers = list(layers)
    if not layers:
        raise WfvizError("No layers to allocate bits to; give at least one LayerCost.")
    names = [la.name for la in layers]
    if len(set(names)) != len(names):
        raise WfvizError("Two layers share a name; every LayerCost needs its own name.")
    if any(not isinstance(la.weights, int) or la.weights < 1 for la in layers):
        raise WfvizError("Every layer needs a positive whole number of weights (a·n).")
    return layers


def _check_budget(budget, min_rate: float, max_rate: float) -> float:
    if not (isinstance(budget, (int, float)) and not isinstance(budget, bool)
            and math.isfinite(budget)) or not 0 <= budget <= 16:
        raise WfvizError(f"The budget must be a number of bits per weight from 0 to 16, got "
                         f"{budget!r}.")
    if not 0 <= min_rate <= max_rate <= 16:
        raise WfvizError(f"Need 0 <= min_rate <= max_rate <= 16, got {min_rate} and {max_rate}.")
    if not min_rate <= budget <= max_rate:
        raise WfvizError(f"The budget {budget} bits per weight lies outside [min_rate, max_rate] "
                         f"= [{min_rate}, {max_rate}]; no plan can meet it.")
    return float(budget)


def _sensitivities(layers, sensitivity) -> tuple[np.ndarray, str]:
    """``s_l`` per layer: from the mapping given, else each LayerCost's own; checked."""
    if sensitivity is None:
        s = np.array([la.sensitivity for la in layers], dtype=float)
        name = "none" if np.all(s == 1.0) else "layers"
    elif isinstance(sensitivity, Mapping):
        known = {la.name for la in layers}
        unknown = [k for k in sensitivity if k not in known]
        if unknown:
            raise WfvizError(f"The sensitivities name layer '{unknown[0]}', which is not among "
                             "the layers; use the full module names of model_linears.")
        missing = [la.name for la in layers if la.name not in sensitivity]
        if missing:
            raise WfvizError(f"The sensitivities have no value for layer '{missing[0]}'; give "
                             "every layer one.")
        s = np.array([sensitivity[la.name] for la in layers], dtype=float)
        name = "custom"
    else:
        raise WfvizError("sensitivity must be None or a mapping of layer name to s_l.")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        bad = next(la.name for la, v in zip(layers, s, strict=True)
                   if not (math.isfinite(v) and v >= 0))
        raise WfvizError(f"The sensitivity of layer '{bad}' is NaN, infinite or negative; "
                         "sensitivities must be finite numbers >= 0.")
    if not np.any(s > 0):
        raise WfvizError("Every sensitivity is 0, so no allocation is better than another; "
                         "give at least one layer a positive sensitivity.")
    return s, name


def _predicted(curves, s, m, rates) -> float:
    return float(sum(si * mi * float(c.distortion(r))
                     for c, si, mi, r in zip(curves, s, m, rates, strict=True)))


def _rates_at(curves, s, log2_theta: float, lo: float, hi: float) -> np.ndarray:
    theta = 2.0 ** log2_theta
    return np.array([min(hi, max(lo, c.best_rate(si, theta)))
                     for c, si in zip(curves, s, strict=True)])


def allocate(layers, budget_bits, *, cost: str = "high-rate", sensitivity=None,
             method: str = "watersic", min_rate: float = 0.0, max_rate: float = 16.0,
             model: str | None = None, model_fingerprint: dict | None = None,
             sensitivity_name: str | None = None) -> RatePlan:
    """Split ``budget_bits`` bits per weight over the layers by reverse waterfilling.

    Parameters
    ----------
    layers : sequence of LayerCost
    budget_bits : float
        Mean bits per weight over all the layers' weights (0 to 16).
    cost : {"high-rate", "measured"}
    sensitivity : mapping, optional
        Layer name → ``s_l``; by default each LayerCost's ``sensitivity``.
    method : {"watersic", "gptq-ec"}
        Whose high-rate constant (GM or AM of ``d``) the ``high-rate`` cost uses.
    min_rate, max_rate : float
        Bounds of every layer's rate.
    model, model_fingerprint : optional
        Recorded in the plan (``wfviz quantize-model`` refuses a plan for another model).
    sensitivity_name : str, optional
        Recorded in the plan (``noise``, ``fisher``...); by default ``none`` when every
        ``s_l`` is 1.

    Returns
    -------
    RatePlan
        Its ``average`` equals the budget to within 1e-9 bit per weight.

    Raises
    ------
    WfvizError
        No layers; a budget outside 0–16 or outside the bounds; sensitivities that are NaN,
        negative, all 0, or name unknown layers; an unknown cost model or method.

    Examples
    --------
    >>> ls = [LayerCost(f"l{i}", 0, "q", m, 1.0, g, g) for i, (m, g) in
    ...       enumerate([(1, 3.0), (1, 1.0), (2, 0.0), (4, -1.0)])]
    >>> p = allocate(ls, 2.0)
    >>> [round(r, 3) for r in p.rates.values()], round(p.uniform_dnll / p.predicted_dnll, 3)
    ([3.5, 2.5, 2.0, 1.5], 1.75)
    """
    layers = _check_layers(layers)
    budget = _check_budget(budget_bits, min_rate, max_rate)
    curves = _curves(layers, cost, _method(method))
    s, default_name = _sensitivities(layers, sensitivity)
    m = np.array([la.weights for la in layers], dtype=float)

    def mean_rate(log2_theta):
        return float(m @ _rates_at(curves, s, log2_theta, min_rate, max_rate) / m.sum())

    lo, hi = -64.0, 64.0  # log2 θ: lower water, more bits; widen until the budget is bracketed
    while mean_rate(lo) < budget and lo > -4096:
        lo *= 2
    while mean_rate(hi) > budget and hi < 4096:
        hi *= 2
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_rate(mid) > budget else (lo, mid)
    rates = _rates_at(curves, s, 0.5 * (lo + hi), min_rate, max_rate)
    return RatePlan(
        rates={la.name: float(r) for la, r in zip(layers, rates, strict=True)},
        weights={la.name: la.weights for la in layers}, theta=2.0 ** (0.5 * (lo + hi)),
        budget=budget, average=float(m @ rates / m.sum()),
        predicted_dnll=_predicted(curves, s, m, rates),
        uniform_dnll=_predicted(curves, s, m, np.full(len(layers), budget)), cost=cost,
        method=method, sensitivity=sensitivity_name or default_name, plan="waterfilling",
        model=model, model_fingerprint=model_fingerprint)


def _fixed_plan(layers, rates, budget, kind, *, cost, method, sensitivity, model,
                model_fingerprint, sensitivity_name) -> RatePlan:
    curves = _curves(layers, cost, _method(method))
    s, default_name = _sensitivities(layers, sensitivity)
    m = np.array([la.weights for la in layers], dtype=float)
    rates = np.asarray(rates, dtype=float)
    return RatePlan(
        rates={la.name: float(r) for la, r in zip(layers, rates, strict=True)},
        weights={la.name: la.weights for la in layers}, theta=math.nan, budget=budget,
        average=float(m @ rates / m.sum()), predicted_dnll=_predicted(curves, s, m, rates),
        uniform_dnll=_predicted(curves, s, m, np.full(len(layers), budget)), cost=cost,
        method=method, sensitivity=sensitivity_name or default_name, plan=kind, model=model,
        model_fingerprint=model_fingerprint)


def uniform_plan(layers, budget_bits, *, cost: str = "high-rate", method: str = "watersic",
                 sensitivity=None, model=None, model_fingerprint=None,
                 sensitivity_name=None) -> RatePlan:
    """Every layer at the budget, with its predicted ΔNLL under the same cost model.

    Examples
    --------
    >>> p = uniform_plan([LayerCost("a", 0, "q", 10, 1.0, 0.0, 0.0)], 3.0)
    >>> p.rates, p.predicted_dnll == p.uniform_dnll
    ({'a': 3.0}, True)
    """
    layers = _check_layers(layers)
    budget = _check_budget(budget_bits, 0.0, 16.0)
    return _fixed_plan(layers, [budget] * len(layers), budget, "uniform", cost=cost,
                       method=method, sensitivity=sensitivity, model=model,
                       model_fingerprint=model_fingerprint, sensitivity_name=sensitivity_name)


def use_more_bits(block: int, blocks: int) -> bool:
    """The blocks a k-quant-style mix favours: the first and last eighth, and every third
    block between (``(i − n/8) mod 3 = 2``, integer eighths as in llama.cpp).

    Examples
    --------
    >>> [b for b in range(16) if use_more_bits(b, 16)]
    [0, 1, 4, 7, 10, 13, 14, 15]
    """
    eighth = blocks // 8
    return block < eighth or block >= 7 * blocks // 8 or (block - eighth) % 3 == 2


def heuristic_plan(layers, budget_bits, *, cost: str = "high-rate", method: str = "watersic",
                   sensitivity=None, model=None, model_fingerprint=None,
                   sensitivity_name=None) -> RatePlan:
    """The fixed mix: ``v`` and ``down`` one bit above the rest in the blocks of
    :func:`use_more_bits`, the rest lowered so the mean rate is the budget.

    Raises
    ------
    WfvizError
        The budget is too small to give the other layers a positive rate.

    Examples
    --------
    >>> ls = [LayerCost(f"b{b}.{k}", b, k, 10, 1.0, 0.0, 0.0) for b in range(2) for k in "qv"]
    >>> sorted(set(heuristic_plan(ls, 3.0).rates.values()))
    [2.75, 3.75]
    """
    layers = _check_layers(layers)
    budget = _check_budget(budget_bits, 0.0, 16.0)
    blocks = max(la.block for la in layers) + 1
    boosted = np.array([la.kind in ("v", "down") and use_more_bits(la.block, blocks)
                        for la in layers])
    m = np.array([la.weights for la in layers], dtype=float)
    base = budget - float(m[boosted].sum() / m.sum())
    if base <= 0:
        raise WfvizError(f"A budget of {budget} bits per weight leaves no bits for the layers "
                         "the heuristic lowers; use a budget of at least 1 bit.")
    return _fixed_plan(layers, base + boosted, budget, "heuristic", cost=cost, method=method,
                       sensitivity=sensitivity, model=model, model_fingerprint=model_fingerprint,
                       sensitivity_name=sensitivity_name)


class GreedyRates:
    """The WaterSIC authors' controller: each layer, in processing order, gets the bits still
    unspent divided by the weights still unquantized; what a layer over- or undershoots is
    passed on to the layers after it.

    A controller for :func:`wfviz.quantize_model` (``plan=GreedyRates(...)``).

    Parameters
    ----------
    weights : mapping
        Layer name → ``a·n`` of every layer to be quantized.
    budget : float
        Mean bits per weight.
    floor, ceiling : float
        Bounds on any one layer's target (a large overshoot early must not ask a later layer
        for 0 bits, which no quantizer can deliver).

    Examples
    --------
    >>> g = GreedyRates({"a": 10, "b": 10}, 3.0)
    >>> g.next_rate("a", 10)
    3.0
    >>> g.record("a", 32.0)
    >>> g.next_rate("b", 10)
    2.8
    """

    def __init__(self, weights: Mapping[str, int], budget: float, *, floor: float = 1.0,
                 ceiling: float = 16.0):
        self.weights = dict(weights)
        self.budget = _check_budget(budget, 0.0, 16.0)
        self.floor, self.ceiling = floor, ceiling
        self.bits_left = self.budget * sum(self.weights.values())
        self.weights_left = sum(self.weights.values())

    def next_rate(self, name: str, weights: int) -> float:
        rate = self.bits_left / max(self.weights_left, 1)
        return float(min(self.ceiling, max(self.floor, rate)))

    def record(self, name: str, bits: float) -> None:
        self.bits_left -= bits
        self.weights_left -= self.weights[name]


# ---------------------------------------------------------------------------------------------
# Layer statistics from a model


def layer_costs(model, sigmas, *, method: str = "watersic", rotation: str = "identity",
                seed: int = 0, sensitivities: Mapping | None = None) -> list[LayerCost]:
    """One :class:`LayerCost` per decoder linear of ``model``, from its one-shot Σ_X.

    Parameters
    ----------
    model : transformers causal LM
    sigmas : SigmaSet or mapping
        Σ_X per ``(block, input)`` (:func:`wfviz.model_quant.one_shot_sigmas`); a SigmaSet
        computes each Cholesky diagonal once.
    method : {"watersic", "gptq-ec"}
        Only checked here (the costs hold both GM and AM).
    rotation, seed : str, int
        The basis the layers will be quantized in (AM(d) depends on it, GM(d) does not).
    sensitivities : mapping, optional
        Layer name → ``s_l`` (default 1).

    Examples
    --------
    >>> costs = layer_costs(m, one_shot_sigmas(m, windows))  # doctest: +SKIP
    >>> costs[0].kind  # doctest: +SKIP
    'q'
    """
    from .model_quant import SigmaSet, _theory, model_linears

    _method(method)
    linears = model_linears(model)
    if sensitivities is not None:
        _sensitivities([_stub(la.name) for la in linears], sensitivities)
    out = []
    for la in linears:
        key = (la.block, la.input)
        theory = sigmas.theory(key, rotation, seed) if isinstance(sigmas, SigmaSet) \
            else _theory(sigmas[key], rotation, seed)
        w2 = float(la.module.weight.detach().double().pow(2).mean())
        s = 1.0 if sensitivities is None else float(sensitivities[la.name])
        out.append(LayerCost(la.name, la.block, KIND_SHORT.get(la.kind, la.kind), la.weights,
                             w2, theory["log2_gm_d"], theory["log2_am_d"], s))
    return out


def _stub(name: str) -> LayerCost:
    return LayerCost(name, 0, "", 1, 1.0, 0.0, 0.0)


def measured_costs(model, sigmas, *, method: str = "watersic", rotation: str = "identity",
                   rates=(2.0, 3.0, 4.0), seed: int = 0, device: str = "auto",
                   sensitivities: Mapping | None = None, progress=None,
                   cancel=None) -> list[LayerCost]:
    """:func:`layer_costs` plus a measured cost curve: each layer's real weights quantized
    against its Σ_X at ``rates`` (targets; the measured rates are stored).

    The model is not changed. ``progress(fraction, message)`` is called after each layer.

    Examples
    --------
    >>> costs = measured_costs(m, sig, method="watersic", rates=(2, 3))  # doctest: +SKIP
    >>> len(costs[0].curve_rates)  # doctest: +SKIP
    2
    """
    from .model_quant import check_rate, model_linears
    from .quantize_layer import quantize

    rates = tuple(check_rate(method, r) for r in rates)
    base = layer_costs(model, sigmas, method=method, rotation=rotation, seed=seed,
                       sensitivities=sensitivities)
    linears = model_linears(model)
    out = []
    for i, (la, c) in enumerate(zip(linears, base, strict=True)):
        sigma = sigmas[(la.block, la.input)]
        points = [quantize(la.module.weight.detach(), sigma, method=method, rate=r,
                           rotation=rotation, seed=seed, device=device, cancel=cancel)
                  for r in rates]
        out.append(LayerCost(**{**c.__dict__,
                                "curve_rates": tuple(float(p.rate) for p in points),
                                "curve_distortions": tuple(float(p.distortion) for p in points)}))
        if progress is not None:
            progress((i + 1) / len(linears), f"cost curve {la.name}")
    return out


# ---------------------------------------------------------------------------------------------
# Stored inputs: what the app needs to allocate without the model installed

COSTS_FILE = "allocation_costs.json"
"""File name of a bundle's stored allocation inputs (beside its ``manifest.json``)."""
COSTS_FORMAT = "wfviz allocation costs"
COSTS_VERSION = 1
READABLE_COSTS_VERSIONS = (1,)


@dataclass(frozen=True, eq=False)
class StoredCosts:
    """Allocation inputs read from a costs file (:func:`load_costs`).

    Attributes
    ----------
    provenance : dict
        Model label and fingerprint, calibration span, how sensitivities and curves were made.
    rows : list of dict
        One per linear layer, in processing order: ``name``, ``block``, ``kind``, ``weights``,
        ``sigma_w2``, ``log2_gm_d`` and ``log2_am_d`` (rotation → value), ``sensitivities``
        (name → ``s_l``) and ``curves`` (``"method/rotation"`` → ``{"rates", "distortions"}``).

    Examples
    --------
    >>> c = StoredCosts({}, [dict(name="a", block=0, kind="q", weights=4, sigma_w2=1.0,
    ...     log2_gm_d={"identity": 0.0}, log2_am_d={"identity": 1.0},
    ...     sensitivities={"none": 1.0, "fisher": 0.5}, curves={})])
    >>> c.rotations, c.sensitivities, c.layer_costs("identity", "fisher")[0].sensitivity
    (('identity',), ('none', 'fisher'), 0.5)
    """

    provenance: dict
    rows: list

    @property
    def rotations(self) -> tuple:
        """Rotations whose high-rate statistics are stored."""
        return tuple(self.rows[0]["log2_gm_d"]) if self.rows else ()

    @property
    def sensitivities(self) -> tuple:
        """Names of the stored sensitivities (always ``none`` first)."""
        return tuple(self.rows[0]["sensitivities"]) if self.rows else ()

    @property
    def curves(self) -> tuple:
        """``(method, rotation)`` pairs with measured cost curves."""
        keys = self.rows[0]["curves"] if self.rows else {}
        return tuple(tuple(k.split("/", 1)) for k in keys)

    def layer_costs(self, rotation: str = "identity", sensitivity: str = "none",
                    curve: tuple | None = None) -> list[LayerCost]:
        """The :class:`LayerCost` list for one rotation and one stored sensitivity, with the
        measured curve of ``curve = (method, rotation)`` when given.

        Raises
        ------
        WfvizError
            A rotation, sensitivity or curve that is not stored.
        """
        for value, known, what in ((rotation, self.rotations, "rotation"),
                                   (sensitivity, self.sensitivities, "sensitivity")):
            if value not in known:
                raise WfvizError(f"The stored costs have no {what} {value!r}; they have "
                                 f"{', '.join(known) or 'none'}.")
        key = None if curve is None else "/".join(curve)
        if curve is not None and tuple(curve) not in self.curves:
            raise WfvizError(f"The stored costs have no measured curve for {key}; make one "
                             "with wfviz allocate --cost measured --save-costs.")
        out = []
        for r in self.rows:
            c = r["curves"][key] if key else {"rates": (), "distortions": ()}
            out.append(LayerCost(r["name"], r["block"], r["kind"], r["weights"], r["sigma_w2"],
                                 r["log2_gm_d"][rotation], r["log2_am_d"][rotation],
                                 r["sensitivities"][sensitivity], tuple(c["rates"]),
                                 tuple(c["distortions"])))
        return out


def save_costs(path, layers, *, provenance: dict, sensitivities: Mapping | None = None,
               curves: Mapping | None = None):
    """Write the allocation inputs of a model as JSON (atomically).

    Parameters
    ----------
    path : str or Path
    layers : mapping
        Rotation → list of :class:`LayerCost` (:func:`layer_costs`), the same layers in the
        same order for every rotation; their ``sensitivity`` is not stored (see below).
    provenance : dict
        Model label and fingerprint, calibration span, anything else to record.
    sensitivities : mapping, optional
        Name (``fisher``, ``noise``) → {layer name → ``s_l``}; ``none`` (all 1) is always added.
    curves : mapping, optional
        ``(method, rotation)`` → list of :class:`LayerCost` with measured curves
        (:func:`measured_costs`).

    Returns
    -------
    Path

    Raises
    ------
    WfvizError
        No layers; rotations whose layers differ; sensitivities or curves for other layers;
        NaN or negative sensitivities.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> ls = [LayerCost("a", 0, "q", 4, 1.0, 0.0, 1.0)]
    >>> p = save_costs(pathlib.Path(tempfile.mkdtemp()) / COSTS_FILE, {"identity": ls},
    ...                provenance={"model": "toy"}, sensitivities={"fisher": {"a": 0.5}})
    >>> load_costs(p).layer_costs("identity", "fisher")[0].sensitivity
    0.5
    """
    from .model_cache import atomic_write_text

    if not isinstance(layers, Mapping) or not layers:
        raise WfvizError("Give the layers as a mapping of rotation to a list of LayerCost.")
    lists = {rot: _check_layers(ls) for rot, ls in layers.items()}
    names = [la.name for la in next(iter(lists.values()))]
    for rot, ls in lists.items():
        if [la.name for la in ls] != names:
            raise WfvizError(f"The layers of rotation {rot!r} are not those of the other "
                             "rotations; compute every rotation's costs from the same model.")
    stubs = [_stub(n) for n in names]
    sens = {"none": dict.fromkeys(names, 1.0)}
    for sname, values in (sensitivities or {}).items():
        s, _ = _sensitivities(stubs, values)
        sens[sname] = dict(zip(names, map(float, s), strict=True))
    curve_docs = {}
    for (method, rot), ls in (curves or {}).items():
        ls = list(ls)
        if [la.name for la in ls] != names:
            raise WfvizError(f"The measured curves of {method}/{rot} are for other layers.")
        curve_docs[f"{_method(method)}/{rot}"] = {
            la.name: {"rates": list(la.curve_rates), "distortions": list(la.curve_distortions)}
            for la in ls}
    first = next(iter(lists.values()))
    rows = []
    for i, la in enumerate(first):
        rows.append({"name": la.name, "block": la.block, "kind": la.kind, "weights": la.weights,
                     "sigma_w2": la.sigma_w2,
                     "log2_gm_d": {rot: ls[i].log2_gm_d for rot, ls in lists.items()},
                     "log2_am_d": {rot: ls[i].log2_am_d for rot, ls in lists.items()},
                     "sensitivities": {k: v[la.name] for k, v in sens.items()},
                     "curves": {k: v[la.name] for k, v in curve_docs.items()}})
    doc = {"format": COSTS_FORMAT, "format_version": COSTS_VERSION,
           "units": {"weights": "a·n", "sigma_w2": "mean square weight",
                     "log2_gm_d": "log2 geometric mean of the Cholesky diagonal of Σ_X",
                     "log2_am_d": "log2 arithmetic mean of it, GPTQ's column order",
                     "sensitivities": "nats per token per unit of output-error energy per token",
                     "curves": "bits per weight → distortion per weight tr(EΣEᵀ)/(a·n)"},
           "provenance": provenance, "layers": rows}
    try:
        text = json.dumps(doc, indent=1, allow_nan=False)
    except ValueError as exc:
        raise WfvizError("The costs hold NaN or infinite values; check the model's Σ_X and "
                         "the measured curves.") from exc
    return atomic_write_text(path, text + "\n")


def load_costs(path) -> StoredCosts:
    """Read a costs file written by :func:`save_costs`.

    Raises
    ------
    WfvizError
        A missing or unreadable file, another format, an unknown version, missing fields.

    Examples
    --------
    >>> load_costs("/no/such/allocation_costs.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    wfviz.errors.WfvizError: /no/such/allocation_costs.json does not exist; ...
    """
    from pathlib import Path

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WfvizError(f"{path} does not exist; write it with wfviz allocate --save-costs."
                         ) from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WfvizError(f"Cannot read {path} ({type(exc).__name__}); it is not a wfviz costs "
                         "file.") from exc
    if not isinstance(doc, dict) or doc.get("format") != COSTS_FORMAT:
        raise WfvizError(f"{path} is not a wfviz allocation costs file.")
    version = doc.get("format_version")
    if version not in READABLE_COSTS_VERSIONS:
        raise WfvizError(f"{path} has costs format version {version!r}; this wfviz reads "
                         f"{', '.join(map(str, READABLE_COSTS_VERSIONS))}, so upgrade wfviz or "
                         "rewrite the file with wfviz allocate --save-costs.")
    rows = doc.get("layers")
    need = ("name", "block", "kind", "weights", "sigma_w2", "log2_gm_d", "log2_am_d",
            "sensitivities")
    if not isinstance(rows, list) or not rows or not all(
            isinstance(r, dict) and all(k in r for k in need) for r in rows):
        raise WfvizError(f"{path} has no usable layer table (each layer needs "
                         f"{', '.join(need)}); rewrite it with wfviz allocate --save-costs.")
    rows = [{**r, "curves": r.get("curves") or {}} for r in rows]
    return StoredCosts(provenance=doc.get("provenance") or {}, rows=rows)


def shipped_costs() -> StoredCosts | None:
    """The first installed bundle's stored costs (``<bundle>/allocation_costs.json``), or None.

    Examples
    --------
    >>> c = shipped_costs()
    >>> c is None or "none" in c.sensitivities
    True
    """
    from .bundles import list_bundles

    for bundle in list_bundles():
        if (bundle.path / COSTS_FILE).is_file():
            return load_costs(bundle.path / COSTS_FILE)
    return None
