"""A literal, unoptimized GPTQ written from Algorithm 1 of Frantar et al. (2022), for testing.

It exists to check ``wfviz.quantizers.gptq`` against the published algorithm: every step is
spelled out with explicit loops and full-matrix operations, nothing is fused or transposed.
Run it directly to compare codes on random inputs::

    .venv/bin/python tests/reference/gptq.py
"""

from __future__ import annotations

import torch


def reference_scale(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-row scale ``2·max|x| / (2^bits − 1)``; a row of zeros uses max 1."""
    scales = torch.empty(x.shape[0], dtype=x.dtype)
    for r in range(x.shape[0]):
        m = x[r].abs().max()
        if m == 0:
            m = torch.ones((), dtype=x.dtype)
        scales[r] = 2 * m / (2**bits - 1)
    return scales


def reference_quant(x: torch.Tensor, scale: torch.Tensor, bits: int):
    """Return (integer code q in [0, 2^bits−1], dequantized value) of one column."""
    maxq = 2**bits - 1
    zero = 2 ** (bits - 1)
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return q, scale * (q - zero)


def reference_gptq(W, sigma, bits, *, percdamp=0.01, blocksize=128, act_order=False,
                   groupsize=0, dtype=torch.float64):
    """Quantize ``W`` (a×n) given ``Σ`` (n×n).

    Returns the signed codes ``q − 2^(bits−1)`` and the unrounded values ``w/scale`` they came
    from (both a×n, original column order), so that a test can tell rounding ties apart.

    Steps of the paper: ``H = 2Σ``; dead columns get ``H_ii = 1`` and zero weights; optional
    act-order; damping ``percdamp·mean(diag H)``; ``H⁻¹`` and its upper Cholesky factor;
    blocks of ``blocksize`` columns, in which each column is quantized, its error divided by
    the diagonal of the factor and subtracted from the rest of the block, and after each block
    the collected errors update all later columns. Group scales are taken from the weights as
    they stand at the start of the block.
    """
    W = W.clone().to(dtype)
    a, n = W.shape
    H = (2 * sigma).to(torch.float64).clone()
    scale = reference_scale(W, bits)
    for i in range(n):
        if H[i, i] == 0:
            H[i, i] = 1
            W[:, i] = 0
    perm = list(range(n))
    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True).tolist()
        W = W[:, perm]
        H = H[perm][:, perm]
    damp = percdamp * torch.mean(torch.diagonal(H))
    for i in range(n):
        H[i, i] += damp
    Hinv = torch.linalg.inv(H)
    Hinv = (Hinv + Hinv.T) / 2
    U = torch.linalg.cholesky(Hinv).T.contiguous().to(dtype)  # upper factor: Hinv = Uᵀ U
    Q = torch.zeros((a, n), dtype=torch.int64)
    X = torch.zeros((a, n), dtype=dtype)
    for i in range(0, n, blocksize):
        end = min(i + blocksize, n)
        W_block_start = W.clone()
        E = torch.zeros((a, end - i), dtype=dtype)
        for j in range(i, end):
            if groupsize > 0 and j % groupsize == 0:
                scale = reference_scale(W_block_start[:, j:j + groupsize], bits)
            q, deq = reference_quant(W[:, j], scale, bits)
            X[:, j] = W[:, j] / scale
            Q[:, j] = q.to(torch.int64) - 2 ** (bits - 1)
            E[:, j - i] = (W[:, j] - deq) / U[j, j]
            for k in range(j, end):
                W[:, k] = W[:, k] - E[:, j - i] * U[j, k]
        W[:, end:] = W[:, end:] - E @ U[i:end, end:]
    inverse = [0] * n
    for pos, col in enumerate(perm):
        inverse[col] = pos
    return Q[:, inverse], X[:, inverse]


def _demo():
    from wfviz.quantizers.gptq import GPTQConfig, quantize_gptq

    g = torch.Generator().manual_seed(0)
    a, n = 64, 300
    W = torch.randn(a, n, generator=g, dtype=torch.float64)
    X = torch.randn(n, 2 * n, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g)
    sigma = X @ X.T / (2 * n)
    for act_order, group in ((False, 0), (True, 0), (False, 32), (True, 64)):
        ref, _ = reference_gptq(W, sigma, 3, act_order=act_order, groupsize=group)
        cfg = GPTQConfig(act_order=act_order, group_size=group, precision="float64")
        ours = quantize_gptq(W, sigma, 3, cfg).codes
        print(f"act_order={act_order!s:5} group={group:3}: "
              f"{int((ref != ours).sum())} of {a * n} codes differ")


if __name__ == "__main__":
    _demo()
