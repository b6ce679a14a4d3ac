"""The one verb: quantize a weight matrix with a method, in a rotated basis, at a rate.

``quantize(W, Σ, WaterSICConfig(...), rate=4)`` is the main form (a registry keyed on the
config type finds the method); a method name is the shorthand for its default config, with
fields as keyword options: ``quantize(W, Σ, "gptq", rate=4, act_order=True)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .basis import working_basis
from .covariance import Covariance
from .device import float64_device, resolve_device, run_with_oom_fallback
from .errors import WfvizError, notify
from .quantizers import MethodSpec, get_method
from .rates import check_metric
from .validation import DEAD_THRESHOLD, as_float64, check_pair


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
    column_rates : ndarray, shape (m,)
        Bits of each column of the basis the method worked in (the ``m`` live features,
        rotated).
    codes : ndarray or torch.Tensor, shape (a, n)
        Integer codes (rotated basis), numpy or tensor like ``W``.
    scales : dict
        Side information of the method (tensors, or numpy like ``W``).
    time_s : float
        Wall time of the whole call: rotating, quantizing, rotating back and measuring.
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


def method_config(method=None, config=None, **options) -> tuple[MethodSpec, object]:
    """The method and its config, from a config instance or a method name plus field options.

    ``config`` may be a config instance or a method name; ``method`` is the keyword form of
    the name. Options are the config's fields and cannot be combined with an instance.

    Examples
    --------
    >>> spec, cfg = method_config("gptq", act_order=True)
    >>> spec.name, cfg.act_order
    ('gptq', True)
    """
    if isinstance(config, str):
        if method is not None and method != config:
            raise WfvizError(f"Two methods were given ({config!r} and {method!r}); give one.")
        method, config = config, None
    if config is not None:
        spec = get_method(config)
        if options:
            raise WfvizError("Pass either a config or method options, not both.")
        if method is not None and method != spec.name:
            raise WfvizError(f"The config is a {type(config).__name__}, which is method "
                             f"{spec.name!r}, not {method!r}.")
        return spec, config
    if method is None:
        raise WfvizError("Say which method to run: pass a config (e.g. WaterSICConfig()) or a "
                         "method name (rtn, gptq, gptq-ec, watersic).")
    spec = get_method(method)
    unknown = sorted(set(options) - set(spec.option_names))
    if unknown:
        raise WfvizError(f"Unknown option(s) {', '.join(unknown)} for method {spec.name!r}; "
                         f"valid ones are {', '.join(spec.option_names)}.")
    try:
        return spec, spec.config_cls(**options)
    except TypeError as exc:
        raise WfvizError(f"Bad options for method {spec.name!r}: {exc}.") from exc


def make_config(method, config=None, **options):
    """The config of ``method`` (see :func:`method_config`).

    Examples
    --------
    >>> make_config("gptq", act_order=True).act_order
    True
    """
    return method_config(method, config, **options)[1]


def sigma_and_rotation_basis(sigma, rotation: str):
    """Σ as a float64 tensor, and the rotation to apply to it.

    An eigenvalues-only :class:`~wfviz.covariance.Covariance` stands for ``Σ = diag(λ)`` in
    its own eigenbasis, so only the rotations it :meth:`~wfviz.covariance.Covariance.supports`
    are allowed, and ``eigenbasis`` is then the identity.

    Examples
    --------
    >>> cov = Covariance(eigenvalues=np.array([2.0, 1.0]))
    >>> s, r = sigma_and_rotation_basis(cov, "eigenbasis")
    >>> s.diagonal().tolist(), r
    ([2.0, 1.0], 'identity')
    """
    if isinstance(sigma, Covariance):
        if sigma.matrix is not None:
            return as_float64(sigma.matrix, "Σ"), rotation
        reason = sigma.unsupported_reason(rotation)
        if reason is not None:
            raise WfvizError(reason)
        lam = as_float64(sigma.eigenvalues, "The eigenvalues")
        return torch.diag(lam), "identity" if rotation == "eigenbasis" else rotation
    return as_float64(sigma, "Σ"), rotation


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
    asked = getattr(config, "damping", None)
    used = info.get("damping_used")
    if asked is None or used is None or used <= asked:
        return None
    return (f"{method}{where}: Σ was not positive definite with damping {asked:g}; it was "
            f"factored with damping {used:g} (× mean diagonal) instead.")


def _like_input(x, W_in, device):
    if isinstance(x, torch.Tensor) and not isinstance(W_in, torch.Tensor):
        return x.detach().cpu().numpy()
    return x.to(device) if isinstance(x, torch.Tensor) else x


def quantize(W, sigma, config=None, *, rate: float, method: str | None = None,
             rotation: str = "identity", seed: int = 0, device: str = "auto",
             rate_metric: str | None = None, progress=None, cancel=None, notice=None,
             **options) -> QuantizeResult:
    """Quantize ``W`` with a method at ``rate`` after rotating the basis, measured honestly.

    Dead features of Σ are taken out, the live weights and Σ are rotated (``W Qᵀ``,
    ``Q Σ Qᵀ``; :func:`wfviz.basis.working_basis`), quantized there, and the reconstruction is
    rotated back, so the distortion is that of the original layer and the rate counts every
    one of its weights.

    Parameters
    ----------
    W : ndarray or torch.Tensor, shape (a, n)
        Weights (rows = out-features).
    sigma : ndarray, torch.Tensor or Covariance, shape (n, n)
        Σ_X in the same basis as ``W``; an eigenvalues-only Covariance means ``diag(λ)``.
    config : config dataclass or str, optional
        The method's config (:class:`~wfviz.quantizers.gptq.GPTQConfig`,
        :class:`~wfviz.quantizers.watersic.WaterSICConfig`, ...), or a method name
        (``"rtn"``, ``"gptq"``, ``"gptq-ec"``, ``"watersic"``) whose config fields can be
        given as keyword ``options``.
    rate : float
        Grid bits (rtn, gptq) or target measured bits per weight (gptq-ec, watersic).
    method : str, optional
        The method name as a keyword (the same as passing it as ``config``).
    rotation : str
        A name of :data:`wfviz.rotations.ROTATIONS`.
    seed : int
        Seed of random rotations.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``; a GPU out of memory falls back to CPU.
    rate_metric : str, optional
        How the rate is counted; the method's default when None.
    progress, cancel : callable, optional
        ``progress(fraction, message)``; ``cancel()`` returning True raises
        :class:`~wfviz.errors.Cancelled`.
    notice : callable, optional
        Also receives the one-line notices (GPU fallback, escalated damping), which are
        issued as :class:`~wfviz.errors.WfvizWarning` in any case.

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
    >>> res = quantize(rng.standard_normal((64, 8)), np.eye(8), "rtn", rate=4)
    >>> res.rate_metric, res.relative_distortion < 0.02
    ('log_cardinality', True)
    >>> from wfviz import WaterSICConfig
    >>> res = quantize(rng.standard_normal((256, 8)), np.eye(8), WaterSICConfig(), rate=3)
    >>> res.method, abs(res.rate - 3) <= 0.01
    ('watersic', True)
    """
    start = time.perf_counter()
    spec, cfg = method_config(method, config, **options)
    metric = rate_metric or spec.default_metric
    check_metric(metric)
    S, rot_name = sigma_and_rotation_basis(sigma, rotation)
    W64, S = check_pair(as_float64(W, "W"), S)
    dev = float64_device(resolve_device(device), notice)
    threshold = getattr(cfg, "dead_threshold", DEAD_THRESHOLD)

    def run(d: torch.device):
        basis = working_basis(W64.to(d), S.to(d), rot_name, seed=seed, dead_threshold=threshold)
        out = spec.quantize(basis.W, basis.S, basis.method_rate(rate, spec.integer_rates), cfg,
                            rate_metric=metric, progress=progress, cancel=cancel)
        return out, basis, basis.distortions([out.W_hat])[0], basis.energy()

    out, basis, distortion, energy = run_with_oom_fallback(run, dev, notice)
    note = damping_notice(spec.name, cfg, out.info)
    if note is not None:
        notify(note, notice)
    W_hat = basis.to_original(out.W_hat.to(torch.float64))
    in_dtype = W.dtype if isinstance(W, torch.Tensor) else torch.float64
    home = W.device if isinstance(W, torch.Tensor) else None
    info = dict(out.info, device=str(W_hat.device), config=cfg, rotation_applied=rot_name,
                live_features=basis.m, dead_features=basis.dead,
                rotation_label=basis.rotation.label)
    return QuantizeResult(
        W_hat=_like_input(W_hat.to(in_dtype), W, home), rate=basis.layer_rate(out.rate),
        rate_metric=out.rate_metric, distortion=distortion,
        relative_distortion=distortion / energy if energy > 0 else math.nan,
        column_rates=np.asarray(out.column_rates), codes=_like_input(out.codes, W, home),
        scales={k: _like_input(v, W, home) for k, v in out.scales.items()},
        time_s=time.perf_counter() - start, method=spec.name, rotation=rotation, info=info)
