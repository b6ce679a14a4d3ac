import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wfviz.errors import WfvizError
from wfviz.rotations import ROTATIONS, get_rotation, hadamard_factors, hadamard_matrix
from wfviz.theory import cholesky_diag


def _spd(n, seed):
    a = np.random.default_rng(seed).standard_normal((n, n + 3))
    return a @ a.T / n


@pytest.mark.parametrize("n", [12, 20, 28, 36, 576, 1536, 4096])
def test_hadamard_orders(n):
    h = hadamard_matrix(n)
    assert set(np.unique(h)) == {-1.0, 1.0}
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n))


@pytest.mark.parametrize("n,split", [(14336, (28, 512)), (1536, (12, 128)), (576, (36, 16)),
                                     (4096, (1, 4096)), (9, None)])
def test_hadamard_factors_cover_llm_sizes(n, split):
    assert hadamard_factors(n) == split


def test_structured_hadamard_14336_is_orthogonal():
    rot = get_rotation("hadamard", 14336, seed=3)
    assert "fallback" not in rot.label
    w = torch.randn(4, 14336, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = rot.apply_weight(w)
    torch.testing.assert_close(y.norm(dim=1), w.norm(dim=1))
    torch.testing.assert_close(rot.unapply_weight(y), w)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 10_000), name=st.sampled_from(list(ROTATIONS)))
def test_rotation_properties(n, seed, name):
    sigma = _spd(n, seed)
    rot = get_rotation(name, n, seed=seed, sigma=sigma)
    q = rot.matrix()
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-10)
    rotated = rot.apply_sigma(sigma)
    np.testing.assert_allclose(rotated, q @ sigma @ q.T, atol=1e-10)
    np.testing.assert_allclose(np.linalg.eigvalsh(rotated), np.linalg.eigvalsh(sigma),
                               rtol=1e-9, atol=1e-10)
    # Π d = det Σ in every basis, as log-sums.
    assert np.isclose(np.log(cholesky_diag(rotated)).sum(),
                      np.linalg.slogdet(sigma)[1], rtol=1e-8, atol=1e-8)
    w = np.random.default_rng(seed + 1).standard_normal((3, n))
    wr = rot.apply_weight(w)
    assert np.isclose(np.trace(wr @ rotated @ wr.T), np.trace(w @ sigma @ w.T), rtol=1e-9)
    np.testing.assert_allclose(rot.unapply_weight(wr), w, atol=1e-10)


@pytest.mark.parametrize("name", list(ROTATIONS))
def test_torch_matches_numpy(name):
    sigma = _spd(24, 1)
    rot = get_rotation(name, 24, seed=5, sigma=sigma)
    w = np.random.default_rng(2).standard_normal((6, 24))
    out = rot.apply_weight(torch.from_numpy(w).float())
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), rot.apply_weight(w), atol=1e-5)
    assert rot.apply_weight(w.astype(np.float32)).dtype == np.float32


def test_seeds_are_deterministic_and_distinct():
    a = get_rotation("hadamard", 64, seed=1).matrix()
    np.testing.assert_array_equal(a, get_rotation("hadamard", 64, seed=1).matrix())
    assert not np.allclose(a, get_rotation("hadamard", 64, seed=2).matrix())
    assert not np.allclose(get_rotation("haar", 8, seed=1).matrix(),
                           get_rotation("haar", 8, seed=2).matrix())


@pytest.mark.parametrize("n", [48, 576])
def test_structured_hadamard_equals_dense(n):
    rot = get_rotation("hadamard", n, seed=4)
    dense = hadamard_matrix(n) * rot.signs / np.sqrt(n)
    np.testing.assert_allclose(rot.matrix(), dense, atol=1e-12)
    w = np.random.default_rng(0).standard_normal((5, n))
    np.testing.assert_allclose(rot.apply_weight(w), w @ dense.T, atol=1e-10)


@pytest.mark.parametrize("n,mix", [(100, "Haar_5⊗H_20"), (9, "Haar_9,"), (30, "Haar_15⊗H_2")])
def test_fallback_is_labelled_and_orthogonal(n, mix):
    rot = get_rotation("hadamard", n, seed=0)
    assert "fallback" in rot.label and mix in rot.label
    q = rot.matrix()
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-10)
    sigma = _spd(n, 0)
    np.testing.assert_allclose(np.linalg.eigvalsh(rot.apply_sigma(sigma)),
                               np.linalg.eigvalsh(sigma), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["eigenbasis", "act_order"])
def test_rotations_that_need_sigma(name):
    with pytest.raises(WfvizError, match="sigma"):
        get_rotation(name, 4)


def test_bad_rotation_name_and_size():
    with pytest.raises(WfvizError, match="identity"):
        get_rotation("spin", 4)
    with pytest.raises(WfvizError, match="size 4"):
        get_rotation("haar", 4).apply_weight(np.ones((2, 5)))
    with pytest.raises(WfvizError):
        hadamard_matrix(9)
