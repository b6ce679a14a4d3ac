"""The one verb: quantize a weight matrix with a method, in a rotated basis, at a rate."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .covariance import Covariance
from .device import float64_device, resolve_device, run_with_oom_fallback
from .errors import WfvizError, all_finite
from .quantizers import get_method

_SPECTRUM_ONLY_ROTATIONS = ("haar", "eigenbasis")


@dataclass
class QuantizeResult:
    """One quantization, measured in the original basis.

    Attributes
    ----------
    W_hat : ndarray or torch.Tensor, shape (a, n)
        Reconstruction in the original basis; numpy if ``W`` was numpy, else a tensor on
        ``W``'s device.
    rate : float
        Bits per weight under ``rate_metric``, side information included.
    rate_metric : str
    distortion : float
        ``tr((W−Ŵ)Σ(W−Ŵ)ᵀ)/(a·n)``, computed in float64 in the original basis.
    relative_distortion : float
        ``distortion / (tr(WΣWᵀ)/(a·n))``.
    column_rates : ndarray, shape (n,)
        Bits of each column of the rotated basis the method worked in.
    codes : ndarray or torch.Tensor, shape (a, n)
        Integer codes (rotated basis), numpy or tensor like ``W``.
    scales : dict
        Side information of the method (tensors, or numpy like ``W``).
    time_s : float
        Wall time of rotating, quantizing and rotating back.
    method, rotation : str
    info : dict
        The method's facts, plus ``device`` and ``config``.
    """

    W_hat: object
    rate: float
    rate_metric: str
    distortion: float
    relative_distortion: float
    column_rates: np.ndarray
    codes: object
    scales: dict
    time_s: float
    method: str
    rotation: str
    info: dict = field(default_factory=dict)


def make_config(method: str, config=None, **options):
    """The method's config from a config instance or from keyword options (not both).

    Examples
    --------
    >>> make_config("gptq", act_order=True).act_order
    True
    """
    spec = get_method(method)
    if config is not None:
        if options:
            raise WfvizError("Pass either config= or method options, not both.")
        if not isinstance(config, spec.config_cls):
            raise WfvizError(f"config must be a {spec.config_cls.__name__} for method "
                             f"{method!r}, got {type(config).__name__}.")
        return config
    unknown = sorted(set(options) - set(spec.option_names))
    if unknown:
        raise WfvizError(f"Unknown option(s) {', '.join(unknown)} for method {method!r}; valid "
                         f"ones are {', '.join(spec.option_names)}.")
    try:
        return spec.config_cls(**options)
    except TypeError as exc:
        raise WfvizError(f"Bad options for method {method!r}: {exc}.") from exc


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise WfvizError(f"{what} must be a numeric array or tensor.") from exc
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise WfvizError(f"{what} must hold real numbers, got dtype {t.dtype}.")
    return t.to(torch.float64)


def sigma_and_rotation_basis(sigma, rotation: str):
    """Σ as a float64 tensor, and whether ``rotation`` is usable with it.

    An eigenvalues-only :class:`~wfviz.covariance.Covariance` stands for ``Σ = diag(λ)`` in
    its own eigenbasis, so only the rotations that need no native basis are allowed:
    ``eigenbasis`` (which is then the identity) and ``haar``.

    Returns
    -------
    sigma : torch.Tensor, float64
    rotation : str
        The rotation to apply to that tensor (``eigenbasis`` becomes ``identity`` on diag(λ)).

    Examples
    --------
    >>> cov = Covariance(eigenvalues=np.array([2.0, 1.0]))
    >>> s, r = sigma_and_rotation_basis(cov, "eigenbasis")
    >>> s.diagonal().tolist(), r
    ([2.0, 1.0], 'identity')
    """
    if isinstance(sigma, Covariance):
        if sigma.matrix is not None:
            return _as_tensor(sigma.matrix, "Σ"), rotation
        if rotation not in _SPECTRUM_ONLY_ROTATIONS:
            raise WfvizError(f"This Σ has only its eigenvalues, so the {rotation!r} rotation "
                             f"(which needs the native basis) is not defined; use "
                             f"{' or '.join(_SPECTRUM_ONLY_ROTATIONS)}.")
        lam = _as_tensor(sigma.eigenvalues, "The eigenvalues")
        return torch.diag(lam), "identity" if rotation == "eigenbasis" else rotation
    return _as_tensor(sigma, "Σ"), rotation


def _check_pair(W: torch.Tensor, S: torch.Tensor) -> None:
    if W.ndim != 2 or 0 in W.shape:
        raise WfvizError(f"W must be a non-empty matrix of shape (a, n), got {tuple(W.shape)}.")
    n = W.shape[1]
    if tuple(S.shape) != (n, n):
        raise WfvizError(f"Σ must be {n}×{n} to match W's {n} columns, got {tuple(S.shape)}.")
    if not (all_finite(W) and all_finite(S)):
        raise WfvizError("W and Σ must be finite; remove NaN and infinite entries first.")


def weighted_error(E: torch.Tensor, S: torch.Tensor) -> float:
    """``tr(E S Eᵀ) / (a·n)`` in float64.

    Examples
    --------
    >>> weighted_error(torch.ones(1, 2), torch.eye(2))
    1.0
    """
    E = E.to(torch.float64)
    return float(((E @ S.to(E.device, torch.float64)) * E).sum()) / E.numel()


def damping_notice(method: str, config, info: dict, where: str = "") -> str | None:
    """The one-line notice for a Cholesky that needed more damping than configured, or None.

    Examples
    --------
    >>> from wfviz import WaterSICConfig
    >>> note = damping_notice("watersic", WaterSICConfig(), {"damping_used": 1e-2}, " on haar")
    >>> print(note)  # doctest: +NORMALIZE_WHITESPACE
    watersic on haar: Σ was not positive definite with damping 0.0001; it was factored with
    damping 0.01 (× mean diagonal) instead.
    """
    asked = getattr(config, "percdamp", getattr(config, "damping", None))
    used = info.get("damping_used")
    if asked is None or used is None or used <= asked:
        return None
    return (f"{method}{where}: Σ was not positive definite with damping {asked:g}; it was "
            f"factored with damping {used:g} (× mean diagonal) instead.")


def _like_input(x, W_in, device):
    if isinstance(x, torch.Tensor) and not isinstance(W_in, torch.Tensor):
        return x.detach().cpu().numpy()
    return x.to(device) if isinstance(x, torch.Tensor) else x


def quantize(W, sigma, *, method: str, rate: float, rotation: str = "identity", seed: int = 0,
             device: str = "auto", rate_metric: str | None = None, progress=None, cancel=None,
             config=None, notice=None, **options) -> QuantizeResult:
    """Quantize ``W`` with ``method`` at ``rate`` after rotating the basis, measured honestly.

    The weights and Σ are rotated (``W Qᵀ``, ``Q Σ Qᵀ``), quantized there, and the
    reconstruction is rotated back, so the distortion is that of the original layer.

    Parameters
    ----------
    W : ndarray or torch.Tensor, shape (a, n)
        Weights (rows = out-features).
    sigma : ndarray, torch.Tensor or Covariance, shape (n, n)
        Σ_X in the same basis as ``W``; an eigenvalues-only Covariance means ``diag(λ)``.
    method : str
        ``"rtn"``, ``"gptq"``, ``"gptq-ec"`` or ``"watersic"``.
    rate : float
        Grid bits (rtn, gptq) or target measured bits per weight (gptq-ec, watersic).
    rotation : str
        A name of :data:`wfviz.rotations.ROTATIONS`.
    seed : int
        Seed of random rotations.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``; a GPU out of memory falls back to CPU.
    rate_metric : str, optional
        How the rate is counted; the method's default when None.
    progress, cancel : callable, optional
        ``progress(fraction, message)``; ``cancel()`` returning True raises ``Cancelled``.
    config : dataclass, optional
        The method's config; alternatively pass its fields as keyword ``options``.
    notice : callable, optional
        Receives one-line notices (e.g. the GPU fallback).

    Returns
    -------
    QuantizeResult

    Notes
    -----
    Precision: ``W`` and Σ are taken to float64, rotated in float64, and the distortion is
    measured in float64 in the original basis (at 6 bits the error is ~10⁻⁴ of the weights, and
    an ill-conditioned Σ cancels digits). Each method then picks its own loop precision (GPTQ:
    float32 like the authors' code; GPTQ-EC and WaterSIC: float32 unless a rounding-noise bound
    asks for float64); all Cholesky factorizations are float64. ``W_hat`` comes back in ``W``'s
    dtype. On Apple MPS, which has no float64, the work runs on the CPU.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> res = quantize(rng.standard_normal((64, 8)), np.eye(8), method="rtn", rate=4)
    >>> res.rate_metric, res.relative_distortion < 0.02
    ('log_cardinality', True)
    """
    spec = get_method(method)
    cfg = make_config(method, config, **options)
    metric = rate_metric or spec.default_metric
    S, rot_name = sigma_and_rotation_basis(sigma, rotation)
    W64 = _as_tensor(W, "W")
    _check_pair(W64, S)
    dev = float64_device(resolve_device(device), notice)

    def run(d: torch.device):
        return _run(W64.to(d), S.to(d), spec, cfg, rate, rot_name, seed, metric, progress,
                    cancel)

    start = time.perf_counter()
    out, W_hat, rot = run_with_oom_fallback(run, dev, notice)
    elapsed = time.perf_counter() - start
    W_dev = W64.to(W_hat.device)
    S_dev = S.to(W_hat.device)
    distortion = weighted_error(W_dev - W_hat, S_dev)
    energy = weighted_error(W_dev, S_dev)
    note = damping_notice(method, cfg, out.info)
    if note is not None and notice is not None:
        notice(note)
    in_dtype = W.dtype if isinstance(W, torch.Tensor) else torch.float64
    W_out = W_hat.to(in_dtype)
    home = W.device if isinstance(W, torch.Tensor) else None
    info = dict(out.info, device=str(W_hat.device), config=cfg, rotation_applied=rot)
    return QuantizeResult(
        W_hat=_like_input(W_out, W, home), rate=out.rate, rate_metric=out.rate_metric,
        distortion=distortion,
        relative_distortion=distortion / energy if energy > 0 else math.nan,
        column_rates=np.asarray(out.column_rates), codes=_like_input(out.codes, W, home),
        scales={k: _like_input(v, W, home) for k, v in out.scales.items()},
        time_s=elapsed, method=method, rotation=rotation, info=info)


def _run(W, S, spec, cfg, rate, rot_name, seed, metric, progress, cancel):
    from .rotations import get_rotation

    rot = get_rotation(rot_name, W.shape[1], seed=seed, sigma=S)
    Wr, Sr = rot.apply_layer(W, S)
    out = spec.quantize(Wr, Sr, rate, cfg, rate_metric=metric, progress=progress,
                        cancel=cancel)
    W_hat = rot.unapply_weight(out.W_hat.to(torch.float64))
    return out, W_hat, rot_name
