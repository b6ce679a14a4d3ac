"""RTN: the symmetric per-row grid without error feedback."""

import pytest
import torch

from wfviz.errors import WfvizError
from wfviz.quantizers.rtn import RTNConfig, quantize_rtn


def test_grid_and_rate():
    W = torch.tensor([[0.7, -0.7, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = quantize_rtn(W, torch.eye(4), 3)
    scale = 2 * 0.7 / 7
    assert out.codes[0].tolist() == [3, -4, 0, 0]  # +3.5 clamps to 3, -3.5 rounds to -4
    assert torch.allclose(out.W_hat[0], torch.tensor([3, -4, 0, 0]) * scale)
    assert torch.all(out.W_hat[1] == 0)
    assert out.rate == pytest.approx(3 + 16 * 2 / 8)
    assert quantize_rtn(W, torch.eye(4), 3, RTNConfig(side_info=False)).rate == 3.0


def test_error_shrinks_with_bits():
    W = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    errs = [float(((quantize_rtn(W, torch.eye(32), b).W_hat - W) ** 2).mean()) for b in (2, 4, 6)]
    assert errs[0] > 10 * errs[1] > 100 * errs[2]


def test_entropy_metrics():
    W = torch.randn(512, 16, generator=torch.Generator().manual_seed(1))
    out = quantize_rtn(W, torch.eye(16), 4, rate_metric="column_entropy")
    assert out.column_rates.shape == (16,)
    assert 2.0 < out.rate - 16 / 16 < 4.0  # one 16-bit row scale over 16 columns
    assert out.rate == pytest.approx(out.column_rates.mean())  # side info in both


def test_bad_input():
    with pytest.raises(WfvizError):
        quantize_rtn(torch.randn(3, 4), torch.eye(5), 2)
    with pytest.raises(WfvizError):
        quantize_rtn(torch.randn(3, 4), torch.eye(4), 0)
    with pytest.raises(WfvizError):
        quantize_rtn([[1.0]], torch.eye(1), 2)
