"""GPTQ (Frantar et al., 2022) with its fixed symmetric per-row grid.

The algorithm follows the published one step for step, so that on the same ``W``, ``Σ`` and
settings it gives the same integer codes as the authors' code (checked against the literal
re-implementation in ``tests/reference/gptq.py`` by ``tests/test_gptq.py``):

1. ``H = 2Σ`` (the factor 2 cancels everywhere); dead columns (``H_ii == 0``: the one rule of
   :func:`wfviz.validation.dead_mask` with threshold 0) get ``H_ii = 1`` and their weights are
   set to 0; optional *act-order* sorts the columns by descending ``diag H`` (stable
   sort) and the permutation is undone at the end.
2. ``H += damping · mean(diag H) · I`` (the authors' ``percdamp``). The authors take ``U``,
   the upper Cholesky factor of ``H⁻¹``; here ``H = R Rᵀ`` is factored with ``R`` upper (one
   Cholesky of ``H`` in reversed order), and ``R⁻¹ = U``. Neither ``H⁻¹`` nor ``U`` is
   formed.
3. Columns are decided first to last in lazy blocks of ``block_size``. The authors feed the
   updated column's error ``(x_j − ŵ_j)/U_jj`` to later columns along ``U_j,>j``; unrolled,
   that is ``x_j = w_j + Σ_{k<j} (w_k − ŵ_k) R_kj/R_jj``, which is what :func:`sic_pass`
   runs: the same decisions (up to floating-point near-ties) with rank-1 updates inside a block
   and one GEMM per block for all later columns.
4. Grid (``sym``): ``scale_r = 2·max_j |W_rj| / (2^b − 1)``, ``zero = 2^(b−1)``,
   ``q = clamp(round(w/scale) + zero, 0, 2^b − 1)``, ``ŵ = scale·(q − zero)``. An all-zero row
   gets ``max = 1``. With ``group_size > 0`` a new per-row scale is taken at every group start
   from the weights as they are at the start of the current block (the lazy updates of earlier
   blocks included, the updates inside the current block not), as the authors' code does. The
   scale over the whole matrix is taken before dead columns are zeroed, also as theirs.

   One deliberate difference: the authors' quantizer gives a row (or group) whose entries are
   all ``≥ 0`` the scale ``max/(2^b − 1)`` instead of ``2·max/(2^b − 1)``; here every row uses
   the symmetric formula above. Random or real weights almost never hit this case.

Precision: GPTQ factors ``H`` in float32 and runs the column loop in float32, as the authors'
code does (the damping of 0.01 bounds the condition number; a float32 factorization that fails
is retried in float64 before any damping is escalated). ``precision="float64"`` runs both in
float64 and is what the code-identity test uses, since float32 sums in a different order can
flip a near-tie. GPTQ-EC, whose high-rate theory needs the factor exactly, factors in float64.

Codes are stored signed, ``q − zero ∈ [−2^(b−1), 2^(b−1) − 1]``, so that ``Ŵ = scale · codes``.
The rate is ``b`` bits (``log_cardinality``) plus 16 bits per stored fp16 scale, or the codes'
measured entropy under another metric plus the same side information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import Cancelled, WfvizError
from ..rates import measure_rate
from ..validation import check_sigma, check_weights, dead_mask
from .base import (
    PRECISIONS,
    SIDE_INFO_BITS,
    CancelFn,
    MethodOutput,
    ProgressFn,
    check_damping,
    damped_cholesky,
)

SUB_BLOCK = 16
"""Columns per inner block of the SIC loops (see :func:`sic_pass`)."""


@dataclass(frozen=True)
class GPTQConfig:
    """Knobs of GPTQ.

    Attributes
    ----------
    damping : float
        Relative damping: ``damping · mean(diag H)`` is added to the diagonal of ``H = 2Σ``
        (the authors' ``percdamp``).
    dead_threshold : float
        Features below this fraction of the median ``Σ_jj`` are dead (see
        :func:`wfviz.validation.dead_mask`): their weights are zeroed and ``H_jj = 1``. The
        default 0 is the authors' rule (only ``H_jj = 0`` is dead), so that the codes stay
        theirs; the entropy-coded methods use :data:`~wfviz.validation.DEAD_THRESHOLD`.
    act_order : bool
        Decide the columns in order of descending ``diag Σ``.
    group_size : int
        Columns per scale group; 0 (or -1) means one scale per row for the whole matrix.
    block_size : int
        Columns per lazy-update block.
    precision : str
        ``"float32"`` (the authors' choice) or ``"float64"`` for the column loop.
    side_info : bool
        Charge 16 bits per stored scale in the reported rate.

    Examples
    --------
    >>> GPTQConfig(act_order=True).damping
    0.01
    """

    damping: float = 0.01
    dead_threshold: float = 0.0
    act_order: bool = False
    group_size: int = 0
    block_size: int = 128
    precision: str = "float32"
    side_info: bool = True

    def __post_init__(self):
        check_damping(self.damping, self.dead_threshold)
        if int(self.group_size) != self.group_size or self.group_size < -1:
            raise WfvizError(f"group_size must be 0 (or -1) for none, or a positive integer, got "
                             f"{self.group_size}.")
        if int(self.block_size) != self.block_size or self.block_size < 1:
            raise WfvizError(f"block_size must be a positive integer, got {self.block_size}.")
        if self.precision not in PRECISIONS:
            raise WfvizError(f"precision must be 'float32' or 'float64', got {self.precision!r}.")


@dataclass(frozen=True)
class GPTQPrepared:
    """What depends on Σ only: reused across rates and weights (also by GPTQ-EC).

    Attributes
    ----------
    F : torch.Tensor, shape (n, n)
        In the dtype of the factorization (float32 for GPTQ's default, else float64).
        The error-feedback matrix in the decision order: ``F = R diag(R)⁻¹``, unit upper
        triangular, where ``H = R Rᵀ`` (damped ``H``, ``R`` upper). ``R⁻¹`` is the authors'
        ``U``, the upper Cholesky factor of ``H⁻¹``.
    r_diag : torch.Tensor, shape (n,), float64
        ``diag R = 1/diag U``; ``r_diag² / 2 = Var(X_j | X_>j)``, GPTQ's ``d_j`` of the damped Σ.
    perm : torch.Tensor or None
        Decision order (act-order), or None for the natural order.
    dead : torch.Tensor, shape (n,), bool
        Columns with ``Σ_jj == 0`` (in the original order).
    damping_abs : float
        The absolute damping added to ``diag H``.
    damping_used : float
        The relative damping that factored (the requested one unless the Cholesky failed and
        it was escalated, see :func:`~wfviz.quantizers.base.damped_cholesky`).
    """

    F: torch.Tensor
    r_diag: torch.Tensor
    perm: torch.Tensor | None
    dead: torch.Tensor
    damping_abs: float
    damping_used: float = 0.0

    @property
    def n(self) -> int:
        return int(self.F.shape[0])

    @cached_property
    def feedback(self) -> float:
        """``max_j ‖F_<j,j‖``: the feedback one column receives, in units of the errors fed.

        Computed on first use (only GPTQ-EC's precision choice needs it); a strided column
        norm over ``F`` costs a third of GPTQ's whole factorization at n = 4096.
        """
        sq = torch.ones(1, self.n, dtype=self.F.dtype, device=self.F.device) @ self.F.square()
        return float((sq - 1).clamp_min(0).sqrt().max())


def prepare_gptq(sigma: torch.Tensor, damping: float = 0.01, act_order: bool = False, *,
                 dtype: torch.dtype = torch.float64, dead_threshold: float = 0.0):
    """GPTQ's damped Hessian factor, in the form its error feedback uses (see :func:`sic_pass`).

    Parameters
    ----------
    sigma : torch.Tensor, shape (n, n)
        Σ_X in the basis to quantize in.
    damping : float
        Relative damping of ``H = 2Σ``.
    act_order : bool
        Sort the columns by descending ``diag H`` first.
    dead_threshold : float
        Dead-feature threshold (:func:`wfviz.validation.dead_mask`).
    dtype : torch.dtype
        Precision of the factorization. float64 by default (Σ may be ill-conditioned and
        GPTQ-EC's high-rate theory needs ``U`` exactly); GPTQ with a float32 loop factors in
        float32 as the authors' code does: the damping bounds the condition number, and a
        float32 failure is retried in float64. ``F`` keeps the dtype that factored.

    Returns
    -------
    GPTQPrepared

    Examples
    --------
    >>> p = prepare_gptq(torch.eye(3), 0.0)
    >>> torch.equal(p.F, torch.eye(3, dtype=torch.float64)), p.r_diag.tolist() == [2**0.5] * 3
    (True, True)
    """
    s = check_sigma(sigma)
    if dtype != torch.float64:
        try:  # float64 factors what float32 cannot before any damping is added
            return _prepare(s.to(dtype), damping, act_order, dead_threshold, escalate=False)
        except WfvizError:
            pass
    return _prepare(s, damping, act_order, dead_threshold)


def _prepare(s: torch.Tensor, damping: float, act_order: bool, dead_threshold: float, *,
             escalate: bool = True) -> GPTQPrepared:
    dead = dead_mask(torch.diagonal(s), dead_threshold)
    perm = None
    if act_order:  # dead columns count as diag H = 1 in the sort, as in the authors' code
        perm = torch.argsort(torch.where(dead, 0.5, torch.diagonal(s)), descending=True,
                             stable=True)
    # With J the order reversal, chol(J H J) = L̃ gives H = R Rᵀ with R = J L̃ J upper, and
    # R⁻¹ is the authors' U. The loop runs on R directly (see sic_pass), so neither H⁻¹ nor
    # a triangular inverse is ever formed. H is built directly in reversed decision order to
    # hold as few n×n copies as possible.
    if perm is None:
        H = s.flip(0, 1)
    else:
        rev = perm.flip(0)
        H = s.index_select(0, rev).index_select(1, rev)
    H.mul_(2.0)
    dead_rev = dead.flip(0) if perm is None else dead[perm.flip(0)]
    H[dead_rev, dead_rev] = 1.0
    L, damping_used, damping_abs = damped_cholesky(H, float(damping), escalate=escalate)
    del H
    F = L.flip(0, 1)
    del L
    r_diag = torch.diagonal(F).clone()
    F.div_(r_diag)
    r_diag = r_diag.to(torch.float64)
    return GPTQPrepared(F=F, r_diag=r_diag, perm=perm, dead=dead, damping_abs=damping_abs,
                        damping_used=damping_used)


def sym_scale(W: torch.Tensor, levels: int) -> torch.Tensor:
    """Per-row scale ``2·max|W_r| / (levels − 1)`` of the symmetric grid (all-zero row → max 1).

    Rows are along the last axis (leading axes are batch axes).

    Examples
    --------
    >>> sym_scale(torch.tensor([[1.5, -3.0], [0.0, 0.0]], dtype=torch.float64), 5).tolist()
    [1.5, 0.5]
    """
    m = torch.linalg.vector_norm(W, ord=math.inf, dim=-1)  # max |W_rj| without an |W| copy
    m = torch.where(m == 0, torch.ones_like(m), m)
    return 2.0 * m / (levels - 1)


def sic_pass(W: torch.Tensor, F: torch.Tensor, scale: torch.Tensor, *, bounds=None,
             group_size: int = 0, levels: int = 0, block_size: int = 128,
             cancel: CancelFn | None = None, progress: ProgressFn | None = None):
    """GPTQ's column loop: round each column with a per-row step and feed its error forward.

    The authors' loop feeds the *updated* column's error ``(x_j − ŵ_j)/U_jj`` forward along the
    row ``U_j,>j`` of the Cholesky factor of ``H⁻¹``. Unrolling that recursion gives the same
    decisions from the factor of ``H`` itself: column ``j`` is rounded from
    ``x_j = w_j + Σ_{k<j} (w_k − ŵ_k) F_kj`` with ``F = R diag(R)⁻¹`` and ``H = R Rᵀ``, so the
    errors fed forward are the final ``W − Ŵ`` and no inverse is needed. Equal in exact
    arithmetic; in floating point the sums differ in order, which can flip a near-tie.

    Several independent problems (say, one per rotation, each with its own ``F``) can run in
    one loop with a leading batch axis: the loop is bound by per-operation overhead below
    n ≈ 2048, so ``P`` problems cost far less than ``P`` loops.

    Parameters
    ----------
    W : torch.Tensor, shape (a, n) or (P, a, n)
        Weights in the decision order, in the working dtype (not modified).
    F : torch.Tensor, shape (n, n) or (P, n, n)
        Feedback matrix :attr:`GPTQPrepared.F` in the same order and dtype.
    scale : torch.Tensor, shape (a,) or (P, a)
        Step of each row (GPTQ's scale, or GPTQ-EC's Δ repeated).
    bounds : tuple of float, optional
        ``(low, high)`` clamp of the signed codes; None for unbounded codes.
    group_size : int
        If > 0, take a new symmetric scale with ``levels`` levels at every group start.
    levels : int
        Grid size for the group scales.
    block_size : int
        Columns per lazy block.
    cancel, progress : callable, optional
        Polled / reported once per block.

    Returns
    -------
    codes : torch.Tensor, shape of W, int64
    scales : torch.Tensor, shape (groups, a) or (groups, P, a)
        The row scales in effect for each group (one group without grouping).

    Examples
    --------
    >>> W = torch.tensor([[0.26, -0.74]])
    >>> codes, s = sic_pass(W, torch.eye(2), torch.tensor([0.5]))
    >>> codes.tolist()
    [[1, -1]]
    >>> both, _ = sic_pass(torch.stack([W, -W]), torch.eye(2).expand(2, 2, 2),
    ...                    torch.tensor([[0.5], [0.5]]))
    >>> both.tolist()
    [[[1, -1]], [[-1, 1]]]
    """
    # Work on Wᵀ: one column per contiguous row, and a block of columns is a view (one
    # transpose up front costs ~2/5 of transposing every block separately).
    codes_t, scales = sic_pass_transposed(W.mT.contiguous(), F, scale, bounds=bounds,
                                          group_size=group_size, levels=levels,
                                          block_size=block_size, cancel=cancel,
                                          progress=progress)
    return codes_t.mT.to(torch.int64), scales


def sic_pass_transposed(Wt: torch.Tensor, F: torch.Tensor, scale: torch.Tensor, *,
                        bounds=None, group_size: int = 0, levels: int = 0,
                        block_size: int = 128, cancel: CancelFn | None = None,
                        progress: ProgressFn | None = None):
    """:func:`sic_pass` on ``Wᵀ`` given contiguous, shape ``(n, a)`` or ``(P, n, a)``.

    Returns the codes transposed in the working dtype (callers that stack their weights build
    them transposed and save two transposing copies) and the scales.

    Examples
    --------
    >>> codes_t, _ = sic_pass_transposed(torch.tensor([[0.26], [-0.74]]), torch.eye(2),
    ...                                  torch.tensor([0.5]))
    >>> codes_t.flatten().tolist()
    [1.0, -1.0]
    """
    if Wt.ndim == 3 and Wt.shape[0] == 1:  # 2-D GEMMs: baddbmm_ costs ~1.7x addmm_ per update
        codes_t, scales = sic_pass_transposed(Wt[0], F[0], scale[0], bounds=bounds,
                                              group_size=group_size, levels=levels,
                                              block_size=block_size, cancel=cancel,
                                              progress=progress)
        return codes_t[None], scales[:, None]
    # A batch axis, when there is one, leads; ``...`` indexing serves both shapes.
    update = torch.Tensor.addmm_ if Wt.ndim == 2 else torch.Tensor.baddbmm_
    n = Wt.shape[-2]
    Xt = Wt.clone()  # the weights plus the feedback received so far
    Et = torch.empty_like(Wt)
    codes_t = torch.empty_like(Wt)
    used = [scale]
    # The loop is bound by per-operation overhead: make every per-column view up front.
    xs, ws, es, cs = Xt.unbind(-2), Wt.unbind(-2), Et.unbind(-2), codes_t.unbind(-2)
    e_rows = Et.unsqueeze(-2).unbind(-3)
    for i1 in range(0, n, block_size):
        if cancel is not None and cancel():
            raise Cancelled()
        i2 = min(i1 + block_size, n)
        Fb = F[..., i1:i2, i1:i2]
        Xb, Eb = Xt[..., i1:i2, :], Et[..., i1:i2, :]
        if group_size > 0:  # the lazy state at the block start, as far as groups reach
            e = min(i2 + group_size, n)
            start = (Xt[..., i1:e, :].clone(), Wt[..., i1:e, :], F[..., i1:e, i1:e])
        for i in range(i2 - i1):
            j = i1 + i
            if group_size > 0 and j % group_size == 0 and j > 0:
                scale = sym_scale(_authors_block_state(*start, i, i + group_size), levels)
                used.append(scale)
            c = torch.div(xs[j], scale, out=cs[j])
            torch.round(c, out=c)  # half to even; in-place round_() is ~6x slower on the CPU
            if bounds is not None:
                c.clamp_(bounds[0], bounds[1])
            torch.addcmul(ws[j], scale, c, value=-1.0, out=es[j])
            # Two-level lazy updates: rank-1 (a K=1 GEMM; addr_ is ~80x slower on the CPU)
            # inside a sub-block, one GEMM per sub-block for the rest of the block. Rank-1
            # updates over the whole block would move ~block/2 rows per column through memory.
            s2 = min(i - i % SUB_BLOCK + SUB_BLOCK, i2 - i1)
            if i + 1 < s2:
                update(Xb[..., i + 1:s2, :], Fb[..., i, i + 1:s2, None], e_rows[j])
            elif s2 < i2 - i1:
                s1 = s2 - SUB_BLOCK
                update(Xb[..., s2:, :], Fb[..., s1:s2, s2:].mT, Eb[..., s1:s2, :])
        if i2 < n:
            update(Xt[..., i2:, :], F[..., i1:i2, i2:].mT, Eb)
        if progress is not None:
            progress(i2 / n, f"column {i2} of {n}")
    return codes_t, torch.stack(used)


def _authors_block_state(X0t, W0t, F0, j, j2):
    """Columns ``j:j2`` of a block as the authors' loop holds them at the block's start.

    ``X0t``, ``W0t`` (a row per column, batch axes first) and ``F0`` start at the block's
    first column. Their lazy state there is
    ``W + (W − Ŵ)_before H_12 H_22⁻¹ = W + (W − Ŵ)_before R_12 R_22⁻¹``, ours is
    ``W + (W − Ŵ)_before F_12``; since ``F_22 = R_22 diag(R_22)⁻¹`` is unit upper triangular,
    theirs is ours times ``F_22⁻¹``, and columns ``< j2`` need only ``F0[:j2, :j2]``.
    """
    fed = (X0t[..., :j2, :] - W0t[..., :j2, :]).mT
    fed = torch.linalg.solve_triangular(F0[..., :j2, :j2], fed, upper=True, left=False,
                                        unitriangular=True)
    return W0t[..., j:j2, :].mT + fed[..., j:]


def check_bits(rate) -> int:
    """The grid bits ``b`` of RTN/GPTQ: a whole number from 1 to 16, else WfvizError."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate != int(rate) \
            or not 1 <= rate <= 16:
        raise WfvizError(f"GPTQ and RTN use a grid of 2^b levels, so the rate must be a whole "
                         f"number of bits from 1 to 16, got {rate!r}.")
    return int(rate)


def unpermute_columns(x: torch.Tensor, perm) -> torch.Tensor:
    """Put columns decided in the order ``perm`` back in their original places."""
    if perm is None:
        return x
    return x[:, torch.argsort(perm)]


def quantize_gptq(W: torch.Tensor, sigma: torch.Tensor, rate: float,
                  config: GPTQConfig = GPTQConfig(), *, rate_metric: str = "log_cardinality",
                  progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                  prepared: GPTQPrepared | None = None) -> MethodOutput:
    """Quantize W with GPTQ on a ``2^rate``-level symmetric per-row (or per-group) grid.

    Parameters
    ----------
    W : torch.Tensor, shape (a, n)
        Weights in the basis of ``sigma``.
    sigma : torch.Tensor, shape (n, n)
        Σ_X (GPTQ's ``H`` is ``2Σ``).
    rate : int
        Bits of the grid ``b`` (1..16).
    config : GPTQConfig
    rate_metric : str
        How the reported rate is counted; ``log_cardinality`` gives ``b`` plus side information.
    progress, cancel : callable, optional
        ``progress(fraction, message)``; ``cancel()`` returning True raises ``Cancelled``.
    prepared : GPTQPrepared, optional
        :func:`prepare_gptq` of this ``sigma`` with the same ``damping`` and ``act_order``.

    Returns
    -------
    MethodOutput
        ``scales["row_scale"]`` has shape ``(groups, a)`` (in decision order of the groups).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> out = quantize_gptq(torch.randn(8, 16, generator=g), torch.eye(16), 4)
    >>> out.rate, int(out.codes.max()) <= 7
    (5.0, True)
    """
    check_weights(W)
    a, n = W.shape
    sigma = check_sigma(sigma, n, values=prepared is None)
    bits = check_bits(rate)
    levels = 2**bits
    prep = prepared if prepared is not None else prepare_gptq(
        sigma, config.damping, config.act_order, dtype=PRECISIONS[config.precision],
        dead_threshold=config.dead_threshold)
    if prep.n != n:
        raise WfvizError("The prepared GPTQ factor is for another Σ; prepare it again.")
    dtype = PRECISIONS[config.precision]
    Wd = W.to(dtype)
    scale0 = sym_scale(Wd, levels)  # before zeroing dead columns, as the authors' code
    if prep.dead.any():
        Wd = Wd.masked_fill(prep.dead[None, :].to(W.device), 0.0)
    if prep.perm is not None:
        Wd = Wd[:, prep.perm.to(W.device)]
    group = int(config.group_size) if config.group_size > 0 else 0
    if group:
        scale0 = sym_scale(Wd[:, :group], levels)
    half = levels // 2
    codes, scales = sic_pass(Wd, prep.F.to(device=W.device, dtype=dtype), scale0,
                             bounds=(-half, half - 1), group_size=group, levels=levels,
                             block_size=int(config.block_size), cancel=cancel, progress=progress)
    per_column = _column_scales(scales, n, group)
    W_hat = (codes.to(dtype) * per_column).to(W.dtype)
    codes, W_hat = unpermute_columns(codes, prep.perm), unpermute_columns(W_hat, prep.perm)
    side = SIDE_INFO_BITS * scales.numel() if config.side_info else 0.0
    measured, column_rates = measure_rate(codes, rate_metric, side_info_bits=side, levels=levels)
    info = {"bits": bits, "levels": levels, "damping_abs": prep.damping_abs,
            "damping_used": prep.damping_used,
            "dead_columns": torch.nonzero(prep.dead).flatten().tolist(),
            "act_order": config.act_order, "group_size": group,
            "precision": config.precision}
    return MethodOutput(W_hat=W_hat, codes=codes, scales={"row_scale": scales},
                        rate=float(measured), rate_metric=rate_metric,
                        column_rates=column_rates, side_info_bits=side, info=info)


def _column_scales(scales: torch.Tensor, n: int, group: int) -> torch.Tensor:
    """Expand the (groups, a) scales to the (a, n) step of every entry (decision order)."""
    if not group:
        return scales[0][:, None]
    idx = torch.arange(n, device=scales.device) // group
    return scales.T[:, idx]
