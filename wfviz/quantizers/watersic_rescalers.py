"""WaterSIC's optional rescalers: ``Ŵ = diag(T) Z diag(α ∘ Γ)`` fitted after the SIC.

Alternating exact least squares on the row rescaler ``T`` and the column rescaler ``Γ`` under
the weighted loss ``tr((W−Ŵ)Σ(W−Ŵ)ᵀ)``, with backtracking. They cost 16 bits per row; see
``benchmarks/NOTES.md`` for when they pay for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import Cancelled
from .base import CancelFn

_GAMMA_CLIP = (-0.1, 1.5)
_LINE_SEARCH_FRACTIONS = (0.5, 0.25, 0.125, 0.0625)


@dataclass
class RescalerFit:
    """Diagonal rescalers ``Ŵ = diag(t) Ŵ0 diag(g)`` fitted by alternating least squares.

    Attributes
    ----------
    t : torch.Tensor, float64, shape (a,)
        Row rescaler ``T``, normalized to ``mean|t| = 1``.
    g : torch.Tensor, float64, shape (m,)
        Column rescaler ``Γ`` (replaces the SIC gains).
    loss_before, loss_after : float
        ``tr((W−Ŵ)S(W−Ŵ)ᵀ)`` per entry with the starting and the fitted rescalers.
    iterations : int
        Alternating iterations run.
    """

    t: torch.Tensor
    g: torch.Tensor
    loss_before: float
    loss_after: float
    iterations: int


class _RescalerProblem:
    """``J(t, g) = tr(WSWᵀ) − 2⟨B, Ŵ⟩ + tr(ŴSŴᵀ)``, ``B = WS``, ``Ŵ = diag(t) Ŵ0 diag(g)``."""

    def __init__(self, W, W0, S):
        self.W0, self.S = W0, S
        self.B = W @ S
        self.WSW = float((self.B * W).sum())
        self.size = W0.numel()

    def gamma_system(self, t):
        W0t = self.W0 * t[:, None]
        F3 = self.S * _gram(W0t)
        f4 = (W0t * self.B).sum(0)
        return F3, f4

    def row_system(self, g):
        M = self.W0 * g
        return (self.B * M).sum(1), ((M @ self.S) * M).sum(1)

    def loss(self, linear, quad, x):
        return (self.WSW - 2 * float(linear @ x) + quad) / self.size


def _gram(X: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``XᵀX`` from its upper block triangle (the lower one is its transpose): a little over
    half the flops of one product."""
    n = X.shape[1]
    G = X.new_empty((n, n))
    for i in range(0, n, block):
        rows = X[:, i:i + block].T @ X[:, i:]
        G[i:i + block, i:] = rows
        G[i + block:, i:i + block] = rows[:, block:].T
    return G


def _ridge(diag_values: torch.Tensor) -> float:
    return max(1e-11, 1e-8 * float(diag_values.mean()))


def _solve_spd(F3, f4):
    eye = torch.eye(F3.shape[0], dtype=F3.dtype, device=F3.device)
    chol, info = torch.linalg.cholesky_ex(F3 + _ridge(torch.diagonal(F3)) * eye)
    if int(info) == 0:
        return torch.cholesky_solve(f4[:, None], chol)[:, 0]
    return torch.linalg.pinv(F3) @ f4


def _gamma_step(F3, f4, prob, g, loss):
    """Exact Γ update for fixed t, with the authors' backtracking; None when nothing helps."""
    g_new = _solve_spd(F3, f4)
    for frac in (1.0, *_LINE_SEARCH_FRACTIONS):
        trial = g + frac * (g_new - g)
        trial_loss = prob.loss(f4, float(trial @ F3 @ trial), trial)
        if trial_loss <= loss:
            return trial
    return None


def _row_step(prob, g):
    f7, f8 = prob.row_system(g)
    t = f7 / (f8 + _ridge(f8))
    return t, prob.loss(f7, float((f8 * t * t).sum()), t)


def fit_rescalers(W: torch.Tensor, W0: torch.Tensor, S: torch.Tensor, g0: torch.Tensor, *,
                  max_iter: int = 100, tol: float = 3e-4,
                  cancel: CancelFn | None = None) -> RescalerFit:
    """Fit ``Ŵ = diag(t) Ŵ0 diag(g)`` to W under ``tr((W−Ŵ)S(W−Ŵ)ᵀ)`` by alternating LS.

    Each iteration solves ``(S ∘ F2 + ρI) g = f4`` exactly with ``F2 = Ŵ0ᵀ diag(t²) Ŵ0`` and
    ``f4_j = Σ_r t_r Ŵ0_rj B_rj`` (``B = WS``; backtracking by halves when the loss rises), clips
    ``g`` to ``[−0.1, 1.5]``, sets every ``t_r`` in closed form and renormalizes
    ``mean|t| = 1``. It stops at a relative loss change below ``tol`` or after ``max_iter``
    iterations; an iteration that raises the loss is undone, and the result is never worse than
    the start ``(t = 1, g = g0)``. Everything runs in float64.

    Parameters
    ----------
    W : torch.Tensor, shape (a, m)
        Target weights.
    W0 : torch.Tensor, shape (a, m)
        Un-gained reconstruction ``Z diag(α)``.
    S : torch.Tensor, shape (m, m)
        The (undamped) Σ of the loss.
    g0 : torch.Tensor, shape (m,)
        Starting column gains (the SIC gains).
    max_iter : int
        Most alternating iterations.
    tol : float
        Relative loss change that counts as converged.
    cancel : callable, optional
        Polled every iteration; returning True raises :class:`Cancelled`.

    Returns
    -------
    RescalerFit

    Examples
    --------
    >>> W = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    >>> fit = fit_rescalers(W, 0.5 * W, torch.eye(2, dtype=torch.float64), torch.ones(2))
    >>> round(fit.loss_before, 3), fit.loss_after < 1e-6
    (1.875, True)
    """
    W, W0, S = (x.to(torch.float64) for x in (W, W0, S))
    prob = _RescalerProblem(W, W0, S)
    t = torch.ones(W.shape[0], dtype=torch.float64, device=W.device)
    g = g0.to(device=W.device, dtype=torch.float64).clone()
    start = loss = None
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        if cancel is not None and cancel():
            raise Cancelled("WaterSIC rescaler fit was cancelled.")
        F3, f4 = prob.gamma_system(t)
        if start is None:  # the first Γ system is at t = 1, so it prices the start for free
            start = loss = prob.loss(f4, float(g @ F3 @ g), g)
        g_new = _gamma_step(F3, f4, prob, g, loss)
        if g_new is None:
            break
        g_new = g_new.clamp(*_GAMMA_CLIP)
        t_new, new_loss = _row_step(prob, g_new)
        scale = float(t_new.abs().mean())
        if new_loss > loss or not scale > 0:
            break
        t, g = t_new / scale, g_new * scale
        change, loss = (loss - new_loss) / max(loss, 1e-300), new_loss
        if change < tol:
            break
    if start is None:
        f7, f8 = prob.row_system(g)
        start = loss = prob.loss(f7, float(f8.sum()), t)
    if loss > start:
        t = torch.ones_like(t)
        g, loss = g0.to(device=W.device, dtype=torch.float64).clone(), start
    return RescalerFit(t=t, g=g, loss_before=start, loss_after=loss, iterations=iterations)
