"""GPTQ as its authors' reference implementation structures it, for timing ``wfviz.quantize``.

A re-implementation written from the published algorithm (Frantar et al., 2022, Algorithm 1)
and the well-known structure of the authors' ``fasterquant`` routine, not their code: float32
``W`` and ``H``; dead columns; damping ``percdamp · mean(diag H)``; the upper Cholesky factor
of ``H⁻¹`` formed through ``cholesky`` → ``cholesky_inverse`` → ``cholesky(upper=True)``; blocks
of ``blocksize`` columns with per-column rank-1 updates inside a block and one GEMM per block
for the rest; per-row symmetric min-max scales. It returns the dequantized weights and the
authors' summed loss. It is what ``benchmarks/bench_quantizers.py`` times ``wfviz.quantize``
against; ``tests/reference/gptq.py`` is the slow literal version that the code-identity tests
use.
"""

from __future__ import annotations

import torch


def _scale_zero(W: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    xmax = torch.maximum(W.min(1).values.abs(), W.max(1).values)
    xmax[xmax == 0] = 1
    scale = 2 * xmax / maxq
    return scale, torch.full_like(scale, (maxq + 1) / 2)


def fasterquant(W: torch.Tensor, H: torch.Tensor, bits: int = 4, *, blocksize: int = 128,
                percdamp: float = 0.01) -> tuple[torch.Tensor, float]:
    """Quantize ``W`` (a × n) with GPTQ given ``H = 2Σ`` (n × n); float32 throughout."""
    W = W.clone().float()
    H = H.clone().float()
    n = W.shape[1]
    maxq = 2**bits - 1
    scale, zero = _scale_zero(W, maxq)
    scale, zero = scale[:, None], zero[:, None]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Q = torch.zeros_like(W)
    losses = torch.zeros_like(W)
    H[torch.arange(n), torch.arange(n)] += percdamp * torch.mean(torch.diag(H))
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        L1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            q = torch.clamp(torch.round(w[:, None] / scale) + zero, 0, maxq)
            q = (scale * (q - zero)).flatten()
            Q1[:, i] = q
            L1[:, i] = (w - q) ** 2 / d**2
            err = (w - q) / d
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        losses[:, i1:i2] = L1 / 2
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q, float(losses.sum())
