"""Reference WaterSIC, re-implemented from the digest, NOT the authors' code.

A deliberately literal re-implementation of the WaterSIC authors' plain-mode algorithm as it is
described in ``/work/shared/docs/watersic-reference.md`` (§1 dead dimensions and damping, §3.1–3.4
the core with its least-squares gain and rescaler, §4(a) the secant search on ``r``). It was
written from that prose digest; no code of the ``egorlifar/watersic`` repository was used. It exists
only so that ``benchmarks/bench_watersic.py`` can compare ``wfviz``'s WaterSIC with the authors'
algorithm in quality (distortion at the same pooled-entropy rate) and speed.

What is literal here, on purpose (including the slow parts):

- dead inputs: ``Σ_ii < 1e-3·median|diag Σ|`` or ``≤ 0``, sliced out, 16 bits per index;
- ``damp = 1e-4·mean(diag Σ)``, ``L = chol(Σ + damp·I)`` lower, float64;
- ``Y = W L``; SIC from the last column to the first, every rank-1 feedback rewrites the full
  width of ``Y`` (no blocking, no restriction to the earlier columns), float64;
- step ``c = 2^{−r}·√12·GM(√s_i·L_ii)`` with raw column second moments ``s_i``;
- per-column LS gain ``γ = ⟨z, y⟩/(c‖z‖²)``, ``γ = 0`` and no feedback for all-zero columns;
- rate = pooled entropy of the live codes + ``(16a + 16n_live + 16n_dead)/(a·n)``;
- secant search on ``r``: a random 10 % of the rows, float32 SIC, pooled entropy, start
  ``r0 = h*``, ``r1 = r0 − (H(r0) − h*)``, then secant, ``r ∈ [−10, 10]``, at most 6 evaluations,
  stop below 0.005 bit, keep the best; then one full float64 compression at that ``r``;
- rescaler: alternating exact Γ-step (ridge ``max(1e-11, 1e-8·mean diag)``, backtracking 0.5 …
  0.0625) / clip Γ to ``[−0.1, 1.5]`` / closed-form T-step / ``mean|t| = 1``; at most 1000
  iterations, relative tolerance 3e-4.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _pooled_entropy(codes: torch.Tensor) -> float:
    _, counts = torch.unique(codes.flatten(), return_counts=True)
    p = counts.to(torch.float64) / codes.numel()
    return float(-(p * torch.log2(p)).sum())


def _dead_mask(sigma: torch.Tensor) -> torch.Tensor:
    diag = torch.diagonal(sigma)
    return (diag <= 0) | (diag.abs() < 1e-3 * diag.abs().median())


def _step(s: torch.Tensor, Ldiag: torch.Tensor, r: float) -> float:
    return 2.0 ** (-r) * math.exp(float(torch.log(torch.sqrt(12 * s) * Ldiag).mean()))


def _sic_full_width(Y: torch.Tensor, L: torch.Tensor, c: float):
    """The authors' unblocked loop: every column's feedback rewrites all of Y (a copy)."""
    Y = Y.clone()
    a, n = Y.shape
    Z = torch.zeros((a, n), dtype=torch.int64)
    gamma = torch.ones(n, dtype=Y.dtype)
    for col in range(n - 1, -1, -1):
        y = Y[:, col]
        z = torch.round(y / c)
        zz = float(z @ z)
        Z[:, col] = z.to(torch.int64)
        if zz > 0:
            gamma[col] = float(z @ y) / zz / c
            Y -= (gamma[col] * c / L[col, col]) * torch.outer(z, L[col, :])
        else:
            gamma[col] = 0.0
    return Z, gamma


def _search_r(Y_sub, s_sub, L, h_target):
    """Secant on r against the pooled entropy of a float32 row subset (≤ 6 evaluations)."""
    Ldiag = torch.diagonal(L)
    L32 = L.to(torch.float32)

    def entropy(r):
        Z, _ = _sic_full_width(Y_sub, L32, _step(s_sub, Ldiag, r))
        return _pooled_entropy(Z)

    rs, hs = [h_target], [entropy(h_target)]
    while len(rs) < 6 and abs(hs[-1] - h_target) >= 0.005:
        if len(rs) == 1:
            r_next = rs[0] - (hs[0] - h_target)
        else:
            slope = (hs[-1] - hs[-2]) / (rs[-1] - rs[-2]) if rs[-1] != rs[-2] else 1.0
            slope = slope if slope != 0 else 1.0
            r_next = rs[-1] - (hs[-1] - h_target) / slope
        r_next = min(10.0, max(-10.0, r_next))
        rs.append(r_next)
        hs.append(entropy(r_next))
    best = int(np.argmin([abs(h - h_target) for h in hs]))
    return rs[best], len(rs)


def _gamma_loss(WSW, F3, f4, g):
    return WSW - 2 * float(f4 @ g) + float(g @ F3 @ g)


def _rescale(W, W0, S, gamma0, max_iter=1000, tol=3e-4):
    """The authors' alternating Γ/T fit (§3.4), float64, in plain mode (B = WS)."""
    a, n = W.shape
    B = W @ S
    WSW = float((B * W).sum())
    t = torch.ones(a, dtype=torch.float64)
    g = gamma0.clone()

    def loss_of(tv, gv):
        M = tv[:, None] * W0 * gv
        return (WSW - 2 * float((B * M).sum()) + float(((M @ S) * M).sum())) / (a * n)

    loss = loss_of(t, g)
    for _ in range(max_iter):
        prev_t, prev_g, prev_loss = t.clone(), g.clone(), loss
        Wt = t[:, None] * W0
        F3 = S * (Wt.T @ Wt)
        f4 = (Wt * B).sum(0)
        ridge = max(1e-11, 1e-8 * float(torch.diagonal(F3).mean()))
        try:
            g_new = torch.linalg.solve(F3 + ridge * torch.eye(n, dtype=F3.dtype), f4)
        except RuntimeError:
            g_new = torch.linalg.pinv(F3) @ f4
        accepted = _gamma_loss(WSW, F3, f4, g_new) / (a * n) <= loss
        for frac in (0.5, 0.25, 0.125, 0.0625):
            if accepted:
                break
            trial = g + frac * (g_new - g)
            if _gamma_loss(WSW, F3, f4, trial) / (a * n) <= loss:
                g_new, accepted = trial, True
        if not accepted:
            break
        clipped = bool(((g_new < -0.1) | (g_new > 1.5)).any())
        g = g_new.clamp(-0.1, 1.5)
        M = W0 * g
        f7 = (B * M).sum(1)
        f8 = ((M @ S) * M).sum(1)
        t = f7 / (f8 + max(1e-11, 1e-8 * float(f8.mean())))
        scale = float(t.abs().mean())
        t, g = t / scale, g * scale
        loss = loss_of(t, g)
        if loss > prev_loss and not clipped:
            t, g, loss = prev_t, prev_g, prev_loss
            break
        if abs(prev_loss - loss) / max(prev_loss, 1e-300) < tol:
            break
    return t, g, loss


def reference_watersic(W, sigma, target_rate: float, *, seed: int = 0):
    """Quantize W at a target pooled-entropy rate, the authors' way (plain mode, rescaler on).

    Parameters
    ----------
    W : torch.Tensor, shape (a, n)
    sigma : torch.Tensor, shape (n, n)
    target_rate : float
        Bits per original weight, pooled entropy plus side information.
    seed : int
        Seed of the 10 % row subset of the search.

    Returns
    -------
    dict
        ``W_hat`` (a×n, zero dead columns), ``rate`` (as the authors count it), ``loss`` (per
        entry, undamped Σ, final ``Ŵ``), ``evaluations`` (search SIC passes), ``c``.
    """
    W = W.to(torch.float64)
    sigma = sigma.to(torch.float64)
    a, n = W.shape
    dead = _dead_mask(sigma)
    live = torch.nonzero(~dead).flatten()
    n_live, n_dead = live.numel(), n - live.numel()
    Wl, Sl = W[:, live], sigma[live][:, live]
    damp = 1e-4 * float(torch.diagonal(Sl).mean())
    L = torch.linalg.cholesky(Sl + damp * torch.eye(n_live, dtype=torch.float64))
    Y = Wl @ L
    overhead = 16 * (a + n_live + n_dead)
    h_target = (target_rate * a * n - overhead) / (a * n_live)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(a, generator=gen)[: max(1, round(0.1 * a))]
    s_sub = (Wl[rows] ** 2).mean(0)
    r, evaluations = _search_r(Y[rows].to(torch.float32), s_sub, L, h_target)
    c = _step((Wl**2).mean(0), torch.diagonal(L), r)
    Z, gamma = _sic_full_width(Y, L, c)
    alpha = c / torch.diagonal(L)
    W0 = Z.to(torch.float64) * alpha
    t, g, _ = _rescale(Wl, W0, Sl, gamma)
    W_hat = torch.zeros_like(W)
    W_hat[:, live] = t[:, None] * W0 * g
    E = W - W_hat
    loss = float(((E @ sigma) * E).sum()) / (a * n)
    rate = (_pooled_entropy(Z) * a * n_live + overhead) / (a * n)
    return {"W_hat": W_hat, "rate": rate, "loss": loss, "evaluations": evaluations, "c": c}
