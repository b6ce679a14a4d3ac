"""GPTQ: identical codes to a literal re-implementation of the published algorithm."""

import pytest
import torch
from reference.gptq import reference_gptq

from wfviz.errors import Cancelled, WfvizError
from wfviz.quantizers.gptq import GPTQConfig, prepare_gptq, quantize_gptq, sic_pass, sym_scale


def _problem(a=48, n=200, seed=0, dead=()):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(a, n, generator=g, dtype=torch.float64)
    X = torch.randn(n, 2 * n, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g)
    X[list(dead)] = 0.0
    return W, X @ X.T / (2 * n)


def _first_mismatch_is_tie(ref, x, ours):
    """Every row that differs first differs where the reference sat on a rounding tie."""
    for r in torch.nonzero((ref != ours).any(dim=1)).flatten().tolist():
        j = int(torch.nonzero(ref[r] != ours[r])[0])
        frac = abs(float(x[r, j]) - float(torch.floor(x[r, j]))) - 0.5
        if abs(frac) > 1e-9:
            return False
    return True


@pytest.mark.parametrize("act_order,group,bits", [(False, 0, 3), (True, 0, 4), (False, 32, 2),
                                                   (True, 64, 3), (False, 256, 3)])
def test_codes_match_reference(act_order, group, bits):
    W, S = _problem(dead=(5, 77))
    ref, x = reference_gptq(W, S, bits, act_order=act_order, groupsize=group)
    cfg = GPTQConfig(act_order=act_order, group_size=group, precision="float64")
    ours = quantize_gptq(W, S, bits, cfg).codes
    mismatched_rows = int((ref != ours).any(dim=1).sum())
    assert mismatched_rows <= 2
    assert _first_mismatch_is_tie(ref, x, ours)


def test_float32_loop_nearly_matches_reference():
    W, S = _problem(seed=1)
    ref, _ = reference_gptq(W, S, 4)
    ours = quantize_gptq(W.float(), S, 4).codes
    assert float((ref != ours).double().mean()) < 0.01


def test_dead_columns_reconstruct_to_zero_and_codes_in_range():
    W, S = _problem(dead=(3,))
    out = quantize_gptq(W, S, 2, GPTQConfig(act_order=True))
    assert torch.all(out.W_hat[:, 3] == 0)
    assert out.info["dead_columns"] == [3]
    assert int(out.codes.min()) >= -2 and int(out.codes.max()) <= 1


def test_reconstruction_is_scale_times_codes_and_rate_counts_side_info():
    W, S = _problem()
    out = quantize_gptq(W, S, 3, GPTQConfig(group_size=50))
    a, n = W.shape
    steps = out.scales["row_scale"].T.repeat_interleave(50, dim=1)
    assert torch.allclose(out.W_hat.float(), (out.codes * steps).float(), atol=1e-6)
    assert out.rate == pytest.approx(3 + 16 * 4 * a / (a * n))
    assert out.rate_metric == "log_cardinality"


def test_error_feedback_beats_plain_rounding():
    W, S = _problem()
    sic = quantize_gptq(W, S, 3).W_hat.double()
    scale = sym_scale(W, 8)[:, None]
    rtn = torch.clamp(torch.round(W / scale), -4, 3) * scale

    def loss(Wh):
        E = W - Wh
        return float(torch.einsum("ij,jk,ik->", E, S, E))

    assert loss(sic) < 0.8 * loss(rtn)


def test_entropy_metric_is_below_cardinality():
    W, S = _problem(a=256)
    out = quantize_gptq(W, S, 4, rate_metric="column_entropy")
    assert out.rate_metric == "column_entropy"
    assert 1.0 < out.rate < 4.0 + 1e-9


def test_prepared_factor_inverts_to_the_authors_upper_cholesky_of_the_damped_inverse():
    _, S = _problem(n=40)
    prep = prepare_gptq(S, 0.01)
    H = 2 * S + 0.01 * float(torch.diagonal(2 * S).mean()) * torch.eye(40, dtype=S.dtype)
    assert torch.all(prep.F == torch.triu(prep.F)) and torch.all(torch.diagonal(prep.F) == 1)
    R = prep.F * prep.r_diag
    assert torch.allclose(R @ R.T, H, rtol=1e-10, atol=1e-10)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    assert torch.allclose(torch.linalg.inv(R), U, rtol=1e-8, atol=1e-10)


def test_sic_pass_cancel():
    with pytest.raises(Cancelled):
        sic_pass(torch.randn(4, 8), torch.eye(8), torch.ones(4), cancel=lambda: True)


@pytest.mark.parametrize("rate", [0, 2.5, 17, True, "4"])
def test_bad_rate(rate):
    W, S = _problem(n=8)
    with pytest.raises(WfvizError, match="whole number"):
        quantize_gptq(W, S, rate)


def test_bad_inputs():
    W, S = _problem(n=8)
    with pytest.raises(WfvizError, match="8×8"):
        quantize_gptq(W, S[:4, :4], 3)
    with pytest.raises(WfvizError, match="finite"):
        quantize_gptq(W * float("nan"), S, 3)
    with pytest.raises(WfvizError, match="positive definite"):
        quantize_gptq(W, -S, 3)
    with pytest.raises(WfvizError, match="damping"):
        GPTQConfig(damping=-1)
    with pytest.raises(WfvizError, match="group_size"):
        GPTQConfig(group_size=2.5)
    with pytest.raises(WfvizError, match="rate metric"):
        quantize_gptq(W, S, 3, rate_metric="bogus")


def test_float32_factor_falls_back_to_float64_before_damping_more():
    """An ill-conditioned Σ that float32 cannot factor undamped is factored in float64, undamped."""
    lam = torch.logspace(0, -12, 64, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64))
    S = (q * lam) @ q.T
    with pytest.raises(RuntimeError):
        torch.linalg.cholesky(2 * S.float())
    prep = prepare_gptq(S, 0.0, dtype=torch.float32)
    assert prep.damping_used == 0.0 and prep.F.dtype == torch.float64
    well = prepare_gptq(torch.eye(8, dtype=torch.float64) * 3, 0.01, dtype=torch.float32)
    exact = prepare_gptq(torch.eye(8) * 3, 0.01)
    assert well.F.dtype == torch.float32 and torch.allclose(well.F.double(), exact.F)
    assert torch.allclose(well.r_diag, exact.r_diag, rtol=1e-6)


def test_the_timing_reference_is_gptq_too():
    """benchmarks/bench_quantizers.py times wfviz.quantize against tests/reference/fasterquant:
    it must compute the same quantizer (float32, as the authors' code)."""
    from reference.fasterquant import fasterquant

    import wfviz

    W, S = _problem(dead=(5,))
    ref, _ = fasterquant(W.float(), (2 * S).float(), 3)
    ours = wfviz.quantize(W, S, "gptq", rate=3).W_hat
    assert float((ref.double() - ours).abs().max()) < 1e-5
