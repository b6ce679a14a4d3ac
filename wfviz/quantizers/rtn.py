"""Round-to-nearest on a symmetric per-row absmax grid: the baseline that ignores Σ.

Each row gets ``scale_r = 2·max_j |W_rj| / (2^b − 1)`` and ``code = clamp(round(w/scale),
−2^(b−1), 2^(b−1) − 1)``, ``ŵ = scale·code``: the same grid as GPTQ (see
:mod:`wfviz.quantizers.gptq`) without the error feedback. The rate is ``b`` bits
(``log_cardinality``) plus one fp16 scale per row, 16 bits; other metrics are measured on the
codes plus the same side information. Σ is not used to quantize (only to check shapes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rates import measure_rate
from ..validation import check_sigma, check_weights
from .base import SIDE_INFO_BITS, CancelFn, MethodOutput, ProgressFn
from .gptq import check_bits, sym_scale


@dataclass(frozen=True)
class RTNConfig:
    """Knobs of RTN.

    Attributes
    ----------
    side_info : bool
        Charge 16 bits per row scale in the reported rate.

    Examples
    --------
    >>> RTNConfig().side_info
    True
    """

    side_info: bool = True


def quantize_rtn(W: torch.Tensor, sigma: torch.Tensor, rate: float,
                 config: RTNConfig = RTNConfig(), *, rate_metric: str = "log_cardinality",
                 progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                 prepared=None) -> MethodOutput:
    """Round W to a ``2^rate``-level symmetric per-row grid.

    Parameters
    ----------
    W : torch.Tensor, shape (a, n)
        Weights.
    sigma : torch.Tensor, shape (n, n)
        Σ_X; only its shape is checked (RTN ignores it).
    rate : int
        Bits of the grid ``b`` (1..16).
    config : RTNConfig
    rate_metric : str
        How the reported rate is counted.
    progress, cancel, prepared
        Accepted for a common interface; RTN is one vectorized step.

    Returns
    -------
    MethodOutput

    Examples
    --------
    >>> out = quantize_rtn(torch.tensor([[0.9, -0.3, 0.1]]), torch.eye(3), 2, RTNConfig(False))
    >>> out.codes.tolist(), out.rate
    ([[1, -1, 0]], 2.0)
    """
    check_weights(W)
    check_sigma(sigma, W.shape[1])
    bits = check_bits(rate)
    levels = 2**bits
    scale = sym_scale(W, levels)
    half = levels // 2
    codes = torch.clamp(torch.round(W / scale[:, None]), -half, half - 1)
    W_hat = codes * scale[:, None]
    side = SIDE_INFO_BITS * W.shape[0] if config.side_info else 0.0
    measured, column_rates = measure_rate(codes.to(torch.int64), rate_metric,
                                          side_info_bits=side, levels=levels)
    if progress is not None:
        progress(1.0, f"RTN done: {measured:.4f} bits ({rate_metric})")
    return MethodOutput(W_hat=W_hat, codes=codes.to(torch.int64),
                        scales={"row_scale": scale[None, :]}, rate=float(measured),
                        rate_metric=rate_metric, column_rates=column_rates, side_info_bits=side,
                        info={"bits": bits, "levels": levels})
