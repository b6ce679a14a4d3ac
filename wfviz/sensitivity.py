"""How much the loss grows per unit of error in one linear layer's output: ``s_l``.

Both estimators return ``{layer name: s_l}`` in the same units: the increase of the mean NLL
per predicted token (nats) per unit of output-error energy per token, ``E‖e_l‖²`` summed over
the layer's ``a_l`` outputs. With that normalisation the allocation's loss model is
``ΔNLL ≈ Σ_l s_l · a_l n_l · D_l`` (``a_l n_l D_l`` is the output-error energy per token of a
quantization with distortion ``D_l`` per weight; ``docs/theory.md`` §9).

- :func:`noise_sensitivity`: Gaussian noise ``τξ`` (``ξ ~ N(0, I)``) added to one layer's output
  at every position, the others clean. Each level is run with ``+τξ`` and ``−τξ`` and the two
  ΔNLL averaged, which cancels the first-order term ``gᵀe`` exactly for the drawn ``ξ``; the
  slope of ΔNLL against the injected energy ``a_l τ²`` is fitted through 0 over two levels
  (``τ`` and ``√2·τ``: the power doubles).
- :func:`fisher_sensitivity`: to second order ``ΔNLL ≈ ½ eᵀHe``; with ``H ≈ E[ggᵀ]`` (the
  empirical Fisher, ``g`` the gradient of the summed token NLL with respect to the layer's output
  at one position) and an error spread evenly over the outputs,
  ``s_l = ½ · Σ_positions ‖g‖² / (a_l · predicted tokens)``.
"""

from __future__ import annotations

import math

import torch

from .errors import WfvizError


def _linears(model, layers):
    from .model_quant import model_linears

    found = model_linears(model)
    if layers is None:
        return found
    known = {la.name: la for la in found}
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise WfvizError(f"Layer '{unknown[0]}' is not a decoder linear of this model; use names "
                         f"such as '{found[0].name}'.")
    return [known[name] for name in layers]


def _check_windows(windows) -> list:
    windows = list(windows)
    if not windows or any(w.numel() < 2 for w in windows):
        raise WfvizError("Sensitivities need at least one token window of 2 or more tokens.")
    return windows


def _nll(model, windows) -> float:
    from .model_eval import evaluate_model

    return evaluate_model(model, windows).nll


class _Noise:
    """A forward hook adding ``sign·τ·ξ`` to a module's output; ``ξ`` is drawn per window from
    ``seed``, so ``+`` and ``−`` and every level see the same direction."""

    def __init__(self, tau: float, seed: int):
        self.tau, self.seed, self.sign, self.window = tau, seed, 1.0, 0

    def __call__(self, _module, _args, out):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.window)
        xi = torch.randn(out.shape, generator=g, dtype=torch.float32).to(out.device, out.dtype)
        self.window += 1
        return out + self.sign * self.tau * xi


def noise_dnll(model, windows, layer: str, tau: float, *, seed: int = 0,
               base_nll: float | None = None) -> float:
    """ΔNLL (nats per predicted token) with noise ``τξ`` on ``layer``'s output, the mean of
    ``+τξ`` and ``−τξ`` (first-order term cancelled).

    Examples
    --------
    >>> noise_dnll(m, windows, "model.layers.0.mlp.down_proj", 0.01)  # doctest: +SKIP
    2.1e-05
    """
    windows = _check_windows(windows)
    (la,) = _linears(model, [layer])
    base = _nll(model, windows) if base_nll is None else base_nll
    total = 0.0
    for sign in (1.0, -1.0):
        noise = _Noise(tau, seed)
        noise.sign = sign
        handle = la.module.register_forward_hook(noise)
        try:
            total += _nll(model, windows)
        finally:
            handle.remove()
    return 0.5 * total - base


def _output_rms(model, windows, linears) -> dict:
    """Root mean square of each linear's output entries on the windows (clean model)."""
    sums = {la.name: [0.0, 0] for la in linears}
    handles = []
    for la in linears:
        def hook(_m, _a, out, acc=sums[la.name]):
            acc[0] += float(out.detach().double().pow(2).sum())
            acc[1] += out.numel()
        handles.append(la.module.register_forward_hook(hook))
    try:
        _nll(model, windows)
    finally:
        for h in handles:
            h.remove()
    return {k: math.sqrt(v[0] / v[1]) for k, v in sums.items()}


def noise_sensitivity(model, windows, *, scale: float = 0.05, layers=None, seed: int = 0,
                      min_dnll: float = 1e-4, progress=None) -> dict:
    """``s_l`` by noise injection, one layer at a time (see the module docstring).

    Parameters
    ----------
    model : transformers causal LM
    windows : sequence of 1-D LongTensor
        Calibration token windows.
    scale : float
        Noise standard deviation relative to the RMS of the layer's clean output (the first
        level; the second has twice the power).
    min_dnll : float
        The first level is raised (τ × 4 at a time, at most 6 times) until its ΔNLL is at least
        this many nats per token, so it stands well above the float32 rounding of the NLL
        (about 1e-7 relative); 1e-4 is still deep in the quadratic regime of a trained model.
    layers : sequence of str, optional
        Layer names (default: every decoder linear).
    seed : int
    progress : callable, optional
        ``progress(fraction, message)`` after each layer.

    Returns
    -------
    dict
        Layer name → ``s_l`` (nats per token per unit of output-error energy per token).
        Costs ``2 + 4·layers`` evaluations of the windows (more where τ is raised).

    Raises
    ------
    WfvizError
        No usable windows, a scale that is not positive, or an unknown layer name.

    Examples
    --------
    >>> s = noise_sensitivity(m, windows, layers=["model.layers.0.mlp.down_proj"])  # doctest: +SKIP
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise WfvizError(f"The noise scale must be a positive number, got {scale!r}.")
    windows = _check_windows(windows)
    linears = _linears(model, layers)
    with torch.no_grad():
        rms = _output_rms(model, windows, linears)
        base = _nll(model, windows)
        out = {}
        for i, la in enumerate(linears):
            tau = scale * rms[la.name]
            first = noise_dnll(model, windows, la.name, tau, seed=seed, base_nll=base)
            for _ in range(6):
                if abs(first) >= min_dnll:
                    break
                tau *= 4.0
                first = noise_dnll(model, windows, la.name, tau, seed=seed, base_nll=base)
            a = la.module.out_features
            x = [a * tau**2 * level for level in (1.0, 2.0)]
            y = [first, noise_dnll(model, windows, la.name, tau * math.sqrt(2.0), seed=seed,
                                   base_nll=base)]
            out[la.name] = sum(xi * yi for xi, yi in zip(x, y, strict=True)) \
                / sum(xi * xi for xi in x)
            if progress is not None:
                progress((i + 1) / len(linears), f"noise {la.name}")
    return out


def fisher_sensitivity(model, windows, *, layers=None, progress=None) -> dict:
    """``s_l = ½ · Σ ‖∂(Σ NLL)/∂y_l‖² / (a_l · predicted tokens)``: one backward pass per window.

    The gradients are taken with respect to the layers' outputs only (the input embeddings are
    the leaf; no parameter gradient is stored). The window's full logits are held for the
    backward pass (``tokens × vocabulary`` floats).

    Returns
    -------
    dict
        Layer name → ``s_l``, in the units of :func:`noise_sensitivity`.

    Examples
    --------
    >>> s = fisher_sensitivity(m, windows)  # doctest: +SKIP
    """
    windows = _check_windows(windows)
    linears = _linears(model, layers)
    sums = {la.name: 0.0 for la in linears}
    handles = []
    for la in linears:
        def hook(_m, _a, out, name=la.name):
            def grad_hook(g):
                sums[name] += float(g.detach().double().pow(2).sum())
            out.register_hook(grad_hook)
        handles.append(la.module.register_forward_hook(hook))
    flags = [p.requires_grad for p in model.parameters()]
    device = next(model.parameters()).device
    predicted = 0
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        embed = model.get_input_embeddings()
        for i, ids in enumerate(windows):
            ids = ids.reshape(1, -1).to(device)
            x = embed(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=x, use_cache=False).logits[0, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            loss.backward()
            predicted += ids.shape[1] - 1
            if progress is not None:
                progress((i + 1) / len(windows), f"Fisher: window {i + 1}/{len(windows)}")
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return {la.name: 0.5 * sums[la.name] / (la.module.out_features * predicted)
            for la in linears}
