import io
import json
import struct
import zipfile

import numpy as np
import pytest
import safetensors.numpy
import torch

from wfviz import covariance_io
from wfviz.covariance import Covariance
from wfviz.covariance_io import (
    DEFAULT_MAX_N,
    load_covariance,
    save_covariance,
    validate_covariance,
)
from wfviz.errors import WfvizError

FORMATS = [".npy", ".npz", ".pt", ".pth", ".safetensors"]


def psd(n=6, seed=0):
    a = np.random.default_rng(seed).standard_normal((n, 2 * n))
    return a @ a.T / (2 * n)


def npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def safetensors_bytes(entries: dict, payload: bytes) -> bytes:
    header = json.dumps(entries).encode()
    return struct.pack("<Q", len(header)) + header + payload


class NotATensor:  # torch.load(weights_only=True) must refuse to rebuild this
    pass


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_matrix_every_format(tmp_path, ext):
    sigma = psd()
    path = save_covariance(tmp_path / f"sigma{ext}", sigma)
    cov = load_covariance(path)
    assert isinstance(cov, Covariance) and cov.is_full
    np.testing.assert_allclose(cov.matrix, sigma, rtol=1e-15)
    np.testing.assert_allclose(cov.eigenvalues, np.sort(np.linalg.eigvalsh(sigma))[::-1])
    assert cov.label == f"sigma{ext}" and cov.source_id.startswith("sha256:")
    again = load_covariance(path.read_bytes(), name=f"upload{ext}")
    assert again.source_id == cov.source_id


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_eigenvalues_every_format(tmp_path, ext):
    path = save_covariance(tmp_path / f"eig{ext}", np.array([1.0, 5.0, 0.0, 2.0]))
    cov = load_covariance(str(path))
    assert cov.matrix is None
    assert cov.eigenvalues.tolist() == [5.0, 2.0, 1.0, 0.0]
    assert cov.eigenvalues.dtype == np.float64


def test_save_accepts_a_covariance(tmp_path):
    cov = validate_covariance(psd())
    out = load_covariance(save_covariance(tmp_path / "c.npz", cov))
    np.testing.assert_allclose(out.matrix, cov.matrix)
    spectrum_only = Covariance(eigenvalues=np.array([2.0, 1.0]))
    assert load_covariance(save_covariance(tmp_path / "e.npy", spectrum_only)).matrix is None


def test_save_rejects_bad_extension_and_shape(tmp_path):
    with pytest.raises(WfvizError, match="extension"):
        save_covariance(tmp_path / "s.csv", np.eye(2))
    with pytest.raises(WfvizError, match="square"):
        save_covariance(tmp_path / "s.npy", np.ones((2, 3)))


def test_npz_key_choice(tmp_path):
    path = tmp_path / "multi.npz"
    np.savez(path, other=np.eye(3), covariance=2 * np.eye(2), eigenvalues=np.ones(4))
    cov = load_covariance(path)
    assert cov.n == 2 and "covariance" in cov.label
    np.savez(path, only=3 * np.eye(2))
    assert load_covariance(path).eigenvalues.tolist() == [3.0, 3.0]
    np.savez(path, a=np.eye(2), b=np.eye(2))
    with pytest.raises(WfvizError, match=r"several arrays \(a, b\)"):
        load_covariance(path)


def test_compressed_npz(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, sigma=psd(5))
    np.testing.assert_allclose(load_covariance(path).matrix, psd(5))


def test_safetensors_key_choice_and_integer_note(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors.numpy.save_file({"x": np.eye(3), "sigma": np.diag([1, 2]).astype(np.int32)}, path)
    cov = load_covariance(path)
    assert cov.eigenvalues.tolist() == [2.0, 1.0]
    assert any("integer" in note for note in cov.notes)
    safetensors.numpy.save_file({"x": np.eye(3), "y": np.eye(3)}, path)
    with pytest.raises(WfvizError, match="several arrays"):
        load_covariance(path)


def test_safetensors_bf16_is_decoded():
    values = np.array([1.5, 0.25], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    data = safetensors_bytes({"e": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, bf16)
    assert load_covariance(data, name="e.safetensors").eigenvalues.tolist() == [1.5, 0.25]


@pytest.mark.parametrize(
    ("entry", "payload", "match"),
    [
        ({"dtype": "F64", "shape": [2, 2], "data_offsets": [0, 32]}, b"\0" * 16, "truncated"),
        ({"dtype": "F64", "shape": [2, 2], "data_offsets": [0, 16]}, b"\0" * 16, "offsets"),
        ({"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}, b"\0" * 2, "BOOL"),
        ({"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}, b"\0" * 2, "F8_E4M3"),
        ({"dtype": "F64", "shape": [40000, 40000], "data_offsets": [0, 8]}, b"\0" * 8, "limit"),
        ({"dtype": "F64", "shape": [2, 3], "data_offsets": [0, 48]}, b"\0" * 48, "square"),
    ],
)
def test_safetensors_header_checks(entry, payload, match):
    data = safetensors_bytes({"sigma": entry}, payload)
    with pytest.raises(WfvizError, match=match):
        load_covariance(data, name="s.safetensors")


def test_safetensors_header_length_is_bounded():
    data = struct.pack("<Q", 2**40) + b"{}"
    with pytest.raises(WfvizError, match="header"):
        load_covariance(data, name="s.safetensors")
    with pytest.raises(WfvizError, match="too short"):
        load_covariance(b"\x01\x02", name="s.safetensors")


def test_torch_dict_and_bfloat16(tmp_path):
    path = tmp_path / "d.pt"
    torch.save({"eigenvalues": torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
                "step": 3, "other": torch.zeros(2)}, path)
    assert load_covariance(path).eigenvalues.tolist() == [2.0, 1.0]


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([1, 2, 3], "not a tensor"),
        (torch.eye(2, dtype=torch.complex64), "complex64"),
        (torch.ones(2, dtype=torch.bool), "bool"),
        (torch.eye(3).to_sparse(), "sparse"),
        (NotATensor(), "never unpickles"),
        ({"a": torch.eye(2), "b": torch.eye(2)}, r"several arrays \(a, b\)"),
        ({}, "no arrays"),
    ],
)
def test_torch_rejections(tmp_path, obj, match):
    path = tmp_path / "bad.pt"
    torch.save(obj, path)
    with pytest.raises(WfvizError, match=match):
        load_covariance(path)


def test_torch_file_size_is_checked_before_loading(tmp_path, monkeypatch):
    path = tmp_path / "big.pt"
    torch.save(torch.eye(64, dtype=torch.float64), path)
    monkeypatch.setattr(covariance_io, "_TORCH_SLACK_BYTES", 0)
    monkeypatch.setattr(covariance_io.torch, "load", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(WfvizError, match="larger than any"):
        load_covariance(path, max_n=4)


def test_torch_shape_limit(tmp_path):
    path = tmp_path / "s.pt"
    torch.save(torch.eye(8), path)
    with pytest.raises(WfvizError, match="above the limit of 4"):
        load_covariance(path, max_n=4)


def test_npy_size_limit_read_from_header_before_allocation():
    header = npy_bytes(np.zeros((1, 1)))  # then claim a 100000 × 100000 matrix with no data
    fake = header.replace(b"(1, 1)", b"(100000, 100000)")
    with pytest.raises(WfvizError, match=f"above the limit of {DEFAULT_MAX_N}"):
        load_covariance(fake, name="huge.npy")
    with pytest.raises(WfvizError, match="above the limit of 2"):
        load_covariance(npy_bytes(np.eye(3)), name="s.npy", max_n=2)


def test_npz_member_header_is_checked_without_extracting():
    member = npy_bytes(np.zeros((1, 1))).replace(b"(1, 1)", b"(100000, 100000)")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("sigma.npy", member)
    with pytest.raises(WfvizError, match="above the limit"):
        load_covariance(buf.getvalue(), name="huge.npz")


def test_npy_header_length_is_bounded_before_numpy_reads_it():
    data = npy_bytes(np.eye(2))
    fake = data[:6] + bytes([2, 0]) + struct.pack("<I", 2**31) + data[10:]  # version 2.0 header
    with pytest.raises(WfvizError, match="header that does not fit"):
        load_covariance(fake, name="h.npy")


def test_npz_member_larger_than_its_header_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("sigma.npy", npy_bytes(np.eye(2)) + b"\0" * 2**20)
    with pytest.raises(WfvizError, match="zip bomb"):
        load_covariance(buf.getvalue(), name="bomb.npz")


def test_truncated_npy():
    data = npy_bytes(np.eye(4))[:-8]
    with pytest.raises(WfvizError, match="truncated"):
        load_covariance(data, name="t.npy")


@pytest.mark.parametrize("ext", FORMATS)
def test_corrupt_and_empty_files(tmp_path, ext):
    with pytest.raises(WfvizError, match="empty"):
        load_covariance(b"", name=f"e{ext}")
    junk = bytes(range(256)) * 4
    with pytest.raises(WfvizError) as info:
        load_covariance(junk, name=f"junk{ext}")
    assert "\n" not in str(info.value)
    path = tmp_path / f"junk{ext}"
    path.write_bytes(junk)
    with pytest.raises(WfvizError):
        load_covariance(path)


def test_path_and_name_errors(tmp_path):
    with pytest.raises(WfvizError, match="unsupported extension"):
        load_covariance(tmp_path / "sigma.csv")
    with pytest.raises(WfvizError, match="not found"):
        load_covariance(tmp_path / "missing.npy")
    (tmp_path / "folder.npy").mkdir()
    with pytest.raises(WfvizError, match="not found"):
        load_covariance(tmp_path / "folder.npy")  # a directory is not a file
    with pytest.raises(WfvizError, match="name"):
        load_covariance(npy_bytes(np.eye(2)))


def test_pickled_npy_is_refused():
    data = npy_bytes(np.array([{"a": 1}], dtype=object))
    with pytest.raises(WfvizError, match="object"):
        load_covariance(data, name="p.npy")


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.ones((2, 3)), "not square"),
        (np.ones((2, 2, 2)), r"shape \(2, 2, 2\)"),
        (np.ones(()), r"shape \(\)"),
        (np.ones((0, 0)), "empty"),
        (np.array([[1.0, np.inf], [np.inf, 1.0]]), "NaN or infinite"),
        (np.array([1.0, np.nan]), "NaN or infinite"),
        (np.array([[1.0, 0.5], [0.0, 1.0]]), r"not symmetric: max \|Σ - Σᵀ\| = 0.5"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), "not positive semidefinite"),
        (np.array([3.0, -1.0]), "not positive semidefinite"),
        (np.array([-1.0, -2.0]), "not positive semidefinite"),
        (np.eye(2, dtype=np.complex128), "complex128"),
        (np.ones(2, dtype=bool), "bool"),
        (np.array(["a", "b"]), "<U1"),
    ],
)
def test_validation_errors(array, match):
    with pytest.raises(WfvizError, match=match):
        validate_covariance(array, label="Σ_X")


def test_small_asymmetry_is_symmetrized_silently():
    sigma = psd()
    noisy = sigma.copy()
    noisy[0, 1] += 1e-9 * np.abs(sigma).max()
    cov = validate_covariance(noisy)
    np.testing.assert_array_equal(cov.matrix, cov.matrix.T)
    assert cov.notes == ()


def test_tiny_negative_eigenvalues_are_clipped_with_a_note():
    cov = validate_covariance(np.array([1.0, -1e-12, 0.5]))
    assert cov.eigenvalues.tolist() == [1.0, 0.5, 0.0]
    assert len(cov.notes) == 1 and "clipped" in cov.notes[0]


def test_float32_rank_deficient_matrix_is_accepted():
    a = np.random.default_rng(0).standard_normal((256, 64))
    sigma = (a @ a.T / 64).astype(np.float32)  # rank 64: float32 rounding makes tiny negatives
    cov = validate_covariance(sigma)
    assert cov.eigenvalues.min() == 0.0
    assert np.count_nonzero(cov.eigenvalues > 1e-3) == 64


def test_integer_matrix_is_converted_with_a_note():
    cov = validate_covariance(np.array([[2, 1], [1, 2]], dtype=np.int64))
    assert cov.matrix.dtype == np.float64 and cov.eigenvalues.tolist() == [3.0, 1.0]
    assert any("integer" in note for note in cov.notes)


def test_diagonal_matrix_and_all_zero_matrix():
    cov = validate_covariance(np.diag([1.0, 3.0, 2.0]))
    assert cov.eigenvalues.tolist() == [3.0, 2.0, 1.0]
    zero = validate_covariance(np.zeros((3, 3)))
    assert zero.eigenvalues.tolist() == [0.0, 0.0, 0.0] and "all zero" in zero.notes[-1]


def test_eigenvalues_match_eigvalsh_for_a_full_matrix():
    sigma = psd(20, seed=4)
    cov = validate_covariance(sigma)
    np.testing.assert_allclose(cov.eigenvalues, np.linalg.eigvalsh(sigma)[::-1], rtol=1e-12)
