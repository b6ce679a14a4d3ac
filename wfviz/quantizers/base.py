"""What every quantizer method returns, and the knobs they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass
class MethodOutput:
    """The result of one method on (W, Σ) given in the basis the method works in.

    Attributes
    ----------
    W_hat : torch.Tensor, shape (a, n)
        Reconstruction in the same basis as the W that was passed in.
    codes : torch.Tensor, shape (a, n), int64
        The integer codes.
    scales : dict[str, torch.Tensor]
        Side information needed to dequantize (per-row scales, per-column steps, rescalers...).
    rate : float
        Measured bits per weight under ``rate_metric``, side information included.
    rate_metric : str
        One of ``wfviz.rates.RATE_METRICS``.
    column_rates : numpy.ndarray, shape (n,)
        Bits per weight of each column under the same metric.
    side_info_bits : float
        Total side-information bits charged for the whole matrix.
    info : dict
        Method-specific facts worth showing (step c, damping used, dead columns, search steps).
    """

    W_hat: torch.Tensor
    codes: torch.Tensor
    scales: dict
    rate: float
    rate_metric: str
    column_rates: np.ndarray
    side_info_bits: float
    info: dict = field(default_factory=dict)


class Cancelled(Exception):
    """Raised inside a long loop when the caller's cancel flag is set."""
