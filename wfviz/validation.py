"""One validation layer for weights and Σ_X, and the one rule for dead features.

Every entry point (``quantize``, ``sweep``, the methods called directly, the statistics and the
pages) checks its inputs here, so that the same bad input gets the same sentence everywhere.
A feature (input channel) is *dead* when its second moment is non-positive or below
:data:`DEAD_THRESHOLD` × the median channel's: its weights cannot change the output, so every
method codes it as an exact zero column and the statistics count it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import WfvizError, all_finite

DEAD_THRESHOLD = 1e-3
"""A feature is dead when ``Σ_jj <= 0`` or ``Σ_jj < DEAD_THRESHOLD · median(diag Σ)``."""


def dead_mask(diag, threshold: float = DEAD_THRESHOLD):
    """Boolean mask of the dead features of a Σ with diagonal ``diag`` (numpy or torch).

    Examples
    --------
    >>> dead_mask(np.array([1.0, 2.0, 1e-6, 0.0])).tolist()
    [False, False, True, True]
    >>> dead_mask(torch.tensor([4.0, 0.0, 1.0])).tolist()
    [False, True, False]
    """
    if not (math.isfinite(threshold) and 0 <= threshold < 1):
        raise WfvizError(f"dead_threshold must be in [0, 1) (e.g. 1e-3), got {threshold}.")
    if isinstance(diag, torch.Tensor):
        med = float(diag.median()) if diag.numel() else 0.0
        return (diag <= 0) | (diag < threshold * med)
    diag = np.asarray(diag, dtype=np.float64)
    med = float(np.median(diag)) if diag.size else 0.0
    return (diag <= 0) | (diag < threshold * med)


def count_dead(diag, threshold: float = DEAD_THRESHOLD) -> int | None:
    """Number of dead features (None when the diagonal is unknown).

    Examples
    --------
    >>> count_dead([1.0, 2.0, 1e-6]), count_dead(None)
    (1, None)
    """
    return None if diag is None else int(dead_mask(diag, threshold).sum())


def as_float64(x, what: str) -> torch.Tensor:
    """``x`` (numpy, torch or nested sequence of reals) as a float64 tensor.

    Examples
    --------
    >>> as_float64([[1, 2]], "W").dtype
    torch.float64
    """
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


def check_weights(W, n: int | None = None) -> torch.Tensor:
    """Raise unless ``W`` is a finite, non-empty 2-D floating tensor (of ``n`` columns).

    Examples
    --------
    >>> check_weights(torch.ones(2, 3)).shape
    torch.Size([2, 3])
    """
    if not isinstance(W, torch.Tensor):
        raise WfvizError("W must be a torch.Tensor here; wfviz.quantize accepts numpy arrays.")
    if W.ndim != 2 or 0 in W.shape:
        raise WfvizError(f"W must be a non-empty 2-D matrix of shape (a, n), got "
                         f"{tuple(W.shape)}.")
    if n is not None and W.shape[1] != n:
        raise WfvizError(f"W must have {n} columns to match Σ, got shape {tuple(W.shape)}.")
    if not W.is_floating_point():
        raise WfvizError(f"W must hold floating-point weights, got {W.dtype}; convert it first.")
    if not all_finite(W):
        raise WfvizError("W must be finite; remove NaN and infinite entries first.")
    return W


def check_sigma(sigma, n: int | None = None, *, values: bool = True) -> torch.Tensor:
    """Σ as a float64 tensor after checking its shape and, with ``values``, its entries.

    Callers that hold a prepared factor of Σ skip the values: preparing checked them, and at
    a = 256 the n×n pass costs as much as a few columns of a quantizer's loop.

    Examples
    --------
    >>> check_sigma(torch.eye(2), 2).dtype
    torch.float64
    """
    if not isinstance(sigma, torch.Tensor):
        raise WfvizError("Σ must be a torch.Tensor here; wfviz.quantize accepts numpy arrays.")
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1] or sigma.shape[0] == 0:
        raise WfvizError(f"Σ must be a non-empty square matrix, got shape {tuple(sigma.shape)}.")
    if n is not None and sigma.shape[0] != n:
        raise WfvizError(f"Σ must be {n}×{n} to match W's {n} columns, got "
                         f"{tuple(sigma.shape)}.")
    if not values:
        return sigma
    s = sigma.to(torch.float64)
    if not all_finite(s):
        raise WfvizError("Σ must be finite; remove NaN and infinite entries first.")
    diag = torch.diagonal(s)
    if float(diag.min()) < -1e-12 * float(diag.abs().max()):
        raise WfvizError("Σ has a negative diagonal entry, so it is not positive definite (nor a "
                         "second moment E[xxᵀ]); check how it was computed.")
    return s


def check_pair(W: torch.Tensor, sigma: torch.Tensor, *, sigma_values: bool = True):
    """Check ``W`` (a × n) and Σ (n × n) together; returns ``(W, Σ as float64)``.

    Examples
    --------
    >>> W, S = check_pair(torch.ones(3, 2), torch.eye(2))
    >>> tuple(W.shape), S.dtype
    ((3, 2), torch.float64)
    """
    check_weights(W)
    return W, check_sigma(sigma, W.shape[1], values=sigma_values)
