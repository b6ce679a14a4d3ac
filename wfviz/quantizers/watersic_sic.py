"""WaterSIC's SIC kernel: the column loop at fixed whitened steps, several at once.

With ``Σ = L Lᵀ`` (``L`` lower, from the damped Σ of the live features) column ``j`` is
quantized from ``y_j = L_jj W_j + Σ_{k>j} (W_k − Ŵ_k) L_kj``, deciding the columns last to
first; every whitened column's error is then exactly its own rounding error. This is the
authors' ``Y = W L`` target minus the decided contributions, without the ``W L`` product. The
feedback is GPTQ-style lazy batching: rank-1 updates inside a sub-block, one GEMM per
sub-block for the rest of the block, one GEMM per block for all earlier columns; about
``a n² / 2`` multiply-adds in all. Several steps (copies of W side by side) and several
problems (a batch axis) share one loop, which is bound by per-operation overhead below
n ≈ 2048. The entry points and the search are in :mod:`wfviz.quantizers.watersic`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import Cancelled, WfvizError
from .base import DEFAULT_NOISE_LIMIT, CancelFn, loop_dtype
from .gptq import SUB_BLOCK

if TYPE_CHECKING:
    from .watersic import WaterSICPrepared


@dataclass
class PassResult:
    """One SIC pass at a fixed step ``c`` (all tensors over the full ``n`` columns).

    Attributes
    ----------
    codes : torch.Tensor, int64, shape (a, n)
        Integer codes, zero in dead columns.
    alpha : torch.Tensor, float64, shape (n,)
        Weight-domain steps ``c / L_jj`` (0 in dead columns).
    gamma : torch.Tensor, float64, shape (n,)
        Per-column gains used in the feedback (1 when ``ls_gain`` is off, 0 for all-zero columns).
    c : float
        The whitened step.
    dtype : torch.dtype
        Precision the pass ran in.
    """

    codes: torch.Tensor
    alpha: torch.Tensor
    gamma: torch.Tensor
    c: float
    dtype: torch.dtype

    @property
    def W_hat(self) -> torch.Tensor:
        """Reconstruction ``Z diag(α ∘ γ)``, float64, shape (a, n)."""
        return self.codes.to(torch.float64) * (self.alpha * self.gamma)


def live_ymax(W: torch.Tensor, prep) -> float:
    """Largest ``|L_jj W_rj|`` over live features: a bound on the residual targets' size."""
    W_live = W[:, prep.live]
    if not W_live.numel():
        return 0.0
    return float(W_live.abs().max()) * float(torch.diagonal(prep.L).max())


def _sic_blocked(Wt, L, steps, ls_gain, block, cancel):
    """Blocked SIC on stacked transposed live weights, optionally for several problems at once.

    ``Wt`` is ``m × (B·a)``: ``B`` copies of the ``a`` rows side by side, copy ``b`` rounded
    with the whitened step ``steps[b]`` (rows are independent, so one loop serves ``B`` steps).
    With a leading problem axis (``Wt``: ``P × m × (B·a)``, ``L``: ``P × m × m``, ``steps``:
    ``P × B``) ``P`` problems with their own factors run in the same loop.
    Returns the codes ``Zt`` (shape of ``Wt``) and the gains ``γ`` (``[P ×] m × B``).

    The column loop is bound by per-operation overhead (each column is only ``P·B·a``
    numbers), so every per-column view is made once up front and the loop body issues about a
    dozen tensor operations; ``γ`` is recovered afterwards from the weight-domain scales.
    """
    if Wt.ndim == 3 and Wt.shape[0] == 1:  # 2-D GEMMs: baddbmm_ costs ~1.7x addmm_ per update
        Zt, gamma = _sic_blocked(Wt[0], L[0], steps[0], ls_gain, block, cancel)
        return Zt[None], gamma[None]
    update = torch.Tensor.addmm_ if Wt.ndim == 2 else torch.Tensor.baddbmm_
    m, width = Wt.shape[-2:]
    B = steps.shape[-1]
    a = width // B
    diag = torch.diagonal(L, dim1=-2, dim2=-1)
    row_step = steps.repeat_interleave(a, dim=-1)
    # one-element tensors: an op with a Python scalar costs ~3x one with a tensor here
    inv_diag = (1.0 / diag).unsqueeze(-1).unbind(-2)
    Yt = Wt * diag[..., None]  # row j holds L_jj W_j plus the feedback received so far
    Et = torch.empty_like(Wt)
    Zt = torch.empty_like(Wt)
    ys, zs = Yt.unbind(-2), Zt.unbind(-2)
    zvs, yvs, wvs, evs = (x.view(*x.shape[:-1], B, a).unbind(-3) for x in (Zt, Yt, Wt, Et))
    e_rows = Et.unsqueeze(-2).unbind(-3)
    scale = Wt.new_empty((*Wt.shape[:-2], m, B))  # α_k γ_k of every copy
    scale_rows, scales = scale.unbind(-2), scale.unsqueeze(-1).unbind(-3)
    for end in range(m, 0, -block):
        if cancel is not None and cancel():
            raise Cancelled("WaterSIC was cancelled.")
        start = max(0, end - block)
        for k in range(end - 1, start - 1, -1):
            torch.div(ys[k], row_step, out=zs[k])
            torch.round(zs[k], out=zs[k])  # half to even; in-place round_() is ~6x slower
            zv = zvs[k]
            if ls_gain:
                # α_k γ_k = ⟨z, y⟩ / (‖z‖² L_kk); z = 0 gives ⟨z, y⟩ = 0, a zero column
                zz = torch.linalg.vecdot(zv, zv).clamp_min_(1)
                torch.linalg.vecdot(zv, yvs[k], out=scale_rows[k]).div_(zz).mul_(inv_diag[k])
            else:
                torch.mul(steps, inv_diag[k], out=scale_rows[k])
            torch.addcmul(wvs[k], zv, scales[k], value=-1.0, out=evs[k])
            # two-level lazy feedback, as in GPTQ's loop: rank-1 (a K=1 GEMM) inside a
            # sub-block, one GEMM per sub-block for the rest of the block
            s2 = end - (end - 1 - k) // SUB_BLOCK * SUB_BLOCK
            s1 = max(start, s2 - SUB_BLOCK)
            if k > s1:
                update(Yt[..., s1:k, :], L[..., k, s1:k, None], e_rows[k])
            elif s1 > start:
                update(Yt[..., start:s1, :], L[..., s1:s2, start:s1].mT, Et[..., s1:s2, :])
        if start > 0:
            update(Yt[..., :start, :], L[..., start:end, :start].mT, Et[..., start:end, :])
    gamma = scale * diag[..., None] / steps[..., None, :] if ls_gain else torch.ones_like(scale)
    return Zt, gamma


def _check_step(c) -> float:
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise WfvizError(f"The WaterSIC step c must be a positive number, got {c}.")
    return float(c)


def watersic_passes(W: torch.Tensor, prep: WaterSICPrepared, steps, *, ls_gain: bool = True,
                    dtype: torch.dtype | None = None, block_size: int = 128,
                    cancel: CancelFn | None = None) -> list[PassResult]:
    """Quantize W with WaterSIC at several fixed whitened steps in one stacked SIC pass.

    Parameters are those of :func:`watersic_pass`, with ``steps`` a sequence of steps ``c``;
    ``dtype`` defaults to the precision that the smallest step needs.

    Returns
    -------
    list of PassResult
        One per step, in the order given.

    Examples
    --------
    >>> from wfviz.quantizers.watersic import WaterSICConfig, prepare_watersic
    >>> prep = prepare_watersic(torch.eye(2, dtype=torch.float64), WaterSICConfig(damping=0))
    >>> W = torch.tensor([[0.26, -1.4]])
    >>> [p.codes.tolist() for p in watersic_passes(W, prep, [0.5, 1.0], ls_gain=False)]
    [[[1, -3]], [[0, -1]]]
    """
    steps = [_check_step(c) for c in steps]
    if dtype is None:
        dtype = loop_dtype("auto", DEFAULT_NOISE_LIMIT, columns=prep.live.numel(),
                           ymax_over_step=live_ymax(W, prep) / min(steps),
                           gain=prep.feedback_gain)
    return stacked_passes([(W, prep, steps)], prep.L_as(dtype)[None], ls_gain, dtype,
                           block_size, cancel)[0]


def stacked_passes(jobs, L, ls_gain, dtype, block_size, cancel) -> list[list[PassResult]]:
    """One SIC loop for ``jobs`` = [(W, prep, steps)] of equal ``a``, live count and steps.

    ``L`` is the problems' live factors stacked in ``dtype`` (``P × m × m``).
    """
    Wt = torch.stack([W[:, prep.live].T.to(dtype).repeat(1, len(steps))
                      for W, prep, steps in jobs])
    cs = torch.tensor([steps for _, _, steps in jobs], dtype=dtype, device=Wt.device)
    Zt, gamma_live = _sic_blocked(Wt, L, cs, ls_gain, int(block_size), cancel)
    del Wt
    return [_pass_results(W, prep, steps, Z, g, dtype)
            for (W, prep, steps), Z, g in zip(jobs, Zt, gamma_live, strict=True)]


def _pass_results(W, prep, steps, Zt, gamma_live, dtype) -> list[PassResult]:
    a, n = W.shape
    inv_diag = 1.0 / torch.diagonal(prep.L)
    # one transposing conversion for all steps; each step's codes are then a row block, copied
    # so that a kept result does not hold the whole pass's buffer
    Z = Zt.T.to(torch.int64, memory_format=torch.contiguous_format)
    everything_live = prep.live.numel() == n
    out = []
    for b, c in enumerate(steps):
        codes = Z[b * a:(b + 1) * a].clone()
        if not everything_live:
            codes = torch.zeros((a, n), dtype=torch.int64, device=W.device).index_copy_(
                1, prep.live, codes)
        alpha = torch.zeros(n, dtype=torch.float64, device=W.device)
        alpha[prep.live] = c * inv_diag
        gamma = torch.zeros(n, dtype=torch.float64, device=W.device)
        gamma[prep.live] = gamma_live[:, b].to(torch.float64)
        out.append(PassResult(codes=codes, alpha=alpha, gamma=gamma, c=c, dtype=dtype))
    return out


def watersic_pass(W: torch.Tensor, prep: WaterSICPrepared, c: float, *, ls_gain: bool = True,
                  dtype: torch.dtype | None = None, block_size: int = 128,
                  cancel: CancelFn | None = None) -> PassResult:
    """Quantize W with WaterSIC at a fixed whitened step ``c`` (no rate search, no rescalers).

    Parameters
    ----------
    W : torch.Tensor, shape (a, n)
        Weights in the basis of ``prep``.
    prep : WaterSICPrepared
        From :func:`~wfviz.quantizers.watersic.prepare_watersic` on the Σ of the same basis.
    c : float
        Whitened step; column ``j`` is rounded with weight-domain step ``c / L_jj``.
    ls_gain : bool
        Use the per-column least-squares gain inside the feedback.
    dtype : torch.dtype, optional
        Precision of the pass; default float32 unless the noise bound asks for float64.
    block_size : int
        Columns per lazy-update block.
    cancel : callable, optional
        Polled once per block; returning True raises :class:`Cancelled`.

    Returns
    -------
    PassResult

    Examples
    --------
    >>> from wfviz.quantizers.watersic import WaterSICConfig, prepare_watersic
    >>> prep = prepare_watersic(torch.eye(2, dtype=torch.float64), WaterSICConfig(damping=0))
    >>> watersic_pass(torch.tensor([[0.26, -1.4]]), prep, 0.5, ls_gain=False).codes.tolist()
    [[1, -3]]
    """
    return watersic_passes(W, prep, [c], ls_gain=ls_gain, dtype=dtype, block_size=block_size,
                           cancel=cancel)[0]
