"""quantize(): rotation round trip, distortion accounting, options, inputs."""

import numpy as np
import pytest
import torch

from wfviz.covariance import Covariance
from wfviz.errors import WfvizError
from wfviz.quantize_layer import QuantizeResult, make_config, quantize
from wfviz.quantizers import GPTQConfig


def _problem(a=128, n=32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3 * n)) * rng.uniform(0.1, 2.0, (n, 1))
    return rng.standard_normal((a, n)), X @ X.T / (3 * n)


@pytest.mark.parametrize("method,rate", [("gptq-ec", 3.0), ("gptq", 3), ("rtn", 3)])
def test_rotated_distortion_equals_original_basis(method, rate):
    from wfviz.rotations import get_rotation

    W, S = _problem()
    res = quantize(W, S, method=method, rate=rate, rotation="haar", seed=3, device="cpu")
    assert isinstance(res, QuantizeResult) and isinstance(res.W_hat, np.ndarray)
    rot = get_rotation("haar", 32, seed=3, sigma=S)
    Wr, Sr = rot.apply_weight(W), rot.apply_sigma(S)
    W_hat_r = rot.apply_weight(res.W_hat)
    E = Wr - W_hat_r
    rotated = float(np.einsum("ij,jk,ik->", E, Sr, E)) / W.size
    assert res.distortion == pytest.approx(rotated, rel=1e-8)
    energy = float(np.einsum("ij,jk,ik->", W, S, W)) / W.size
    assert res.relative_distortion == pytest.approx(res.distortion / energy, rel=1e-6)
    assert res.rotation == "haar" and res.method == method


def test_identity_matches_the_method_directly():
    from wfviz.quantizers.gptq import quantize_gptq

    W, S = _problem()
    res = quantize(torch.tensor(W, dtype=torch.float32), S, method="gptq", rate=4,
                   act_order=True)
    direct = quantize_gptq(torch.tensor(W, dtype=torch.float64), torch.tensor(S), 4,
                           GPTQConfig(act_order=True))
    assert res.W_hat.dtype == torch.float32
    assert torch.equal(res.codes, direct.codes)
    assert res.rate_metric == "log_cardinality"
    assert res.time_s > 0


def test_rate_metric_and_config_instance():
    W, S = _problem(a=256)
    res = quantize(W, S, method="gptq", rate=4, rate_metric="column_entropy",
                   config=GPTQConfig(group_size=16))
    side = 16 * 2 / 32  # two 16-bit group scales per row of 32 columns
    assert res.rate_metric == "column_entropy" and side + 2 < res.rate < side + 4
    assert res.column_rates.shape == (32,)


def test_eigenvalues_only_covariance():
    lam = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125])
    cov = Covariance(eigenvalues=lam)
    W = np.random.default_rng(1).standard_normal((512, 8))
    res = quantize(W, cov, method="gptq-ec", rate=3.0, rotation="eigenbasis")
    E = W - res.W_hat
    assert res.distortion == pytest.approx(float(((E**2) * lam).sum()) / E.size, rel=1e-10)
    quantize(W, cov, method="gptq-ec", rate=3.0, rotation="haar")
    for rot in ("identity", "hadamard", "act_order"):
        with pytest.raises(WfvizError, match="only its eigenvalues"):
            quantize(W, cov, method="gptq-ec", rate=3.0, rotation=rot)


def test_full_covariance_object():
    W, S = _problem()
    cov = Covariance(eigenvalues=np.linalg.eigvalsh(S)[::-1].copy(), matrix=S)
    a = quantize(W, cov, method="rtn", rate=3).distortion
    b = quantize(W, S, method="rtn", rate=3).distortion
    assert a == b


def test_bad_options_and_inputs():
    W, S = _problem()
    with pytest.raises(WfvizError, match="valid ones are damping"):
        quantize(W, S, method="gptq", rate=3, groupsize=128)
    with pytest.raises(WfvizError, match="Unknown method"):
        quantize(W, S, method="awq", rate=3)
    with pytest.raises(WfvizError, match="either"):
        make_config("gptq", GPTQConfig(), act_order=True)
    with pytest.raises(WfvizError, match="not a method config"):
        make_config("gptq", config=object())
    with pytest.raises(WfvizError, match="8×8"):
        quantize(W[:, :8], S, method="rtn", rate=3)
    with pytest.raises(WfvizError, match="finite"):
        quantize(W * np.nan, S, method="rtn", rate=3)
    with pytest.raises(WfvizError, match="real numbers"):
        quantize(W.astype(complex), S, method="rtn", rate=3)
    with pytest.raises(WfvizError, match="device"):
        quantize(W, S, method="rtn", rate=3, device="tpu")
