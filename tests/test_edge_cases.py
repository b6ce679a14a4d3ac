"""Numerical edge cases of the quantizers: damping retry, rank deficiency, extreme sizes/rates.

Every case either works (and the result is checked) or is refused with one WfvizError sentence.
"""

import numpy as np
import pytest
import torch

import wfviz
from wfviz.errors import WfvizError
from wfviz.experiments import sweep
from wfviz.quantizers.base import MAX_RELATIVE_DAMPING, damped_cholesky
from wfviz.quantizers.gptq import prepare_gptq
from wfviz.quantizers.watersic import WaterSICConfig, prepare_watersic
from wfviz.stats import layer_stats

F64 = torch.float64
ENTROPY_METHODS = ("gptq-ec", "watersic")


def _few_tokens_sigma(n=48, tokens=12, seed=0):
    """Σ = XᵀX / N from N < n tokens: rank N, every channel alive."""
    X = np.random.default_rng(seed).standard_normal((tokens, n))
    return X.T @ X / tokens


def _one_sentence(exc: Exception) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg
    assert msg.rstrip().endswith(".")


def test_damped_cholesky_escalates_and_reports_the_damping_used():
    A = torch.from_numpy(_few_tokens_sigma(n=32, tokens=4))
    with pytest.raises(RuntimeError):
        torch.linalg.cholesky(A)  # numerically singular: the plain factorization fails
    L, used, absolute = damped_cholesky(A.clone(), 0.0)
    assert 0 < used <= MAX_RELATIVE_DAMPING
    assert absolute == pytest.approx(used * float(torch.diagonal(A).mean()))
    damped = A + absolute * torch.eye(32, dtype=F64)
    assert torch.allclose(L @ L.T, damped, atol=1e-10)


def test_damped_cholesky_keeps_the_requested_damping_when_it_works():
    A = torch.eye(3, dtype=F64) * 2
    _, used, absolute = damped_cholesky(A.clone(), 0.01)
    assert used == 0.01 and absolute == pytest.approx(0.02)


def test_damped_cholesky_gives_up_clearly_on_an_indefinite_matrix():
    A = torch.diag(torch.tensor([1.0, 1.0, -5.0], dtype=F64))
    with pytest.raises(WfvizError, match="not positive definite") as err:
        damped_cholesky(A, 1e-4)
    _one_sentence(err.value)


@pytest.mark.parametrize("prepare", [lambda S: prepare_gptq(S, 0.0),
                                     lambda S: prepare_watersic(S, WaterSICConfig(damping=0.0))])
def test_prepare_escalates_damping_on_a_rank_deficient_sigma(prepare):
    prep = prepare(torch.from_numpy(_few_tokens_sigma()))
    assert prep.damping_used > 0 and prep.damping_abs > 0


@pytest.mark.parametrize("method", ["gptq", "gptq-ec", "watersic"])
def test_rank_deficient_sigma_quantizes_and_says_why_damping_grew(method):
    S = _few_tokens_sigma()
    W = np.random.default_rng(1).standard_normal((256, S.shape[0]))
    notes = []
    opt = {"damping": 0.0}
    res = wfviz.quantize(W, S, method=method, rate=4, notice=notes.append, **opt)
    assert res.info["damping_used"] > 0
    assert any("not positive definite" in n for n in notes)
    assert np.isfinite(res.distortion) and res.relative_distortion < 0.1


def test_rank_deficiency_and_dead_features_are_explained_in_the_stats():
    S = _few_tokens_sigma(n=40, tokens=10)
    S[:, 3] = S[3, :] = 0.0  # one dead channel on top of the missing tokens
    s = layer_stats(wfviz.validate_covariance(S, label="few tokens"))
    assert s["numerical_rank"] <= 10 and s["dead_features"] == 1
    assert any("numerical rank" in note and "fewer calibration tokens" in note
               for note in s["notes"])


@pytest.mark.parametrize("method", ["rtn", "gptq", "gptq-ec", "watersic"])
def test_rate_zero_is_refused_clearly(method):
    with pytest.raises(WfvizError) as err:
        wfviz.quantize(np.ones((8, 4)), np.eye(4), method=method, rate=0)
    _one_sentence(err.value)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_rate_16_works_on_a_16_bit_grid(method):
    W = np.random.default_rng(0).standard_normal((16, 8))
    res = wfviz.quantize(W, np.eye(8), method=method, rate=16, rate_metric="log_cardinality")
    assert res.rate >= 16 and res.relative_distortion < 1e-8


@pytest.mark.parametrize("method", ENTROPY_METHODS)
def test_rate_16_measured_entropy_is_refused_with_few_rows(method):
    with pytest.raises(WfvizError, match="cannot be measured") as err:
        wfviz.quantize(np.random.default_rng(0).standard_normal((256, 8)), np.eye(8),
                       method=method, rate=16)
    _one_sentence(err.value)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_one_row_works_on_a_grid(method):
    rows = sweep(np.diag([3.0, 1.0, 0.5]), methods=method, rotations="identity", rates=[4],
                 rows=1)
    assert len(rows) == 1 and np.isfinite(rows[0].distortion)


@pytest.mark.parametrize("method", ENTROPY_METHODS)
def test_one_row_cannot_measure_an_entropy_and_says_so(method):
    with pytest.raises(WfvizError, match="side information|more rows") as err:
        sweep(np.diag([3.0, 1.0, 0.5]), methods=method, rotations="identity", rates=[2],
              rows=1)
    _one_sentence(err.value)


@pytest.mark.parametrize("method", ["rtn", "gptq", "gptq-ec", "watersic"])
def test_a_single_feature_works(method):
    W = np.random.default_rng(0).standard_normal((512, 1))
    res = wfviz.quantize(W, np.array([[2.0]]), method=method, rate=3)
    assert res.W_hat.shape == (512, 1)
    assert 0 < res.relative_distortion < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_lapack_cholesky_matches_torch_and_reports_failure(dtype):
    from wfviz.quantizers.base import POTRF_MIN_N, cholesky_ex

    n = POTRF_MIN_N
    g = torch.Generator().manual_seed(0)
    A = torch.randn(n, n + 8, generator=g, dtype=torch.float64)
    S = (A @ A.T / n).to(dtype)
    L, info = cholesky_ex(S)
    assert info == 0 and L.dtype == dtype and torch.equal(L, torch.tril(L))
    assert torch.allclose(L, torch.linalg.cholesky(S), rtol=1e-3, atol=1e-4)
    S[5, 5] = -1.0  # indefinite: LAPACK's info names the failing leading minor
    assert cholesky_ex(S)[1] > 0
