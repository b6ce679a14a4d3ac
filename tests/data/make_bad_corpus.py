"""Write the hostile-input corpus in ``tests/data/bad/`` and its ``MANIFEST.json``.

Every file is built from fixed bytes, fixed seeds and fixed zip timestamps, so running the
script again reproduces the corpus byte for byte. The manifest records, per file, whether the
loader must refuse it (``"refuse"``) or accept it with a clear note (``"accept"``), a regular
expression (matched ignoring case) the error message or one of the notes must match, and why.

Files whose pickle payload would act if it were ever executed are *not* kept here: the tests
write them at run time into their own temporary directory (see ``tests/test_bad_inputs.py``).

Run ``python tests/data/make_bad_corpus.py`` from the repository root.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import struct
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "bad"
ZIP_TIME = (2026, 1, 1, 0, 0, 0)

# Broad message patterns: the reason must be recognisable, the exact wording may change.
CORRUPT = r"corrupt|truncated|could not read|not a valid|too short|malformed|version"
SHAPE = r"shape|n × n|1-D|square"
TOO_BIG = r"limit|max_n|larger than"
DTYPE = r"dtype"
EMPTY = r"empty|no arrays"


def psd(n: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((n, 2 * n))
    return a @ a.T / (2 * n)


def npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def npy_with_header(header: str, payload: bytes = b"", version: tuple = (1, 0)) -> bytes:
    """An .npy file with a hand-written header dictionary (padded as numpy pads it)."""
    text = header.encode("latin1")
    fmt, prefix = ("<H", 10) if version == (1, 0) else ("<I", 12)
    pad = -(prefix + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(text)) + text + payload


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = compression
            zf.writestr(info, data)
    return buf.getvalue()


def safetensors_bytes(header, payload: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + payload


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def npz_bomb() -> bytes:
    """An 8 × 8 identity whose zip member inflates to 32 MiB: the header's shape is modest."""
    member = npy(np.eye(8)) + bytes(32 * 2**20)
    return zip_bytes({"sigma.npy": member}, zipfile.ZIP_DEFLATED)


def refuse(data: bytes, match: str, why: str) -> dict:
    return {"data": data, "expect": "refuse", "match": match, "why": why}


def accept(data: bytes, match: str | None, why: str) -> dict:
    return {"data": data, "expect": "accept", "match": match, "why": why}


def corpus() -> dict[str, dict]:
    good = npy(psd(16))
    st_good = safetensors_bytes({"sigma": {"dtype": "F64", "shape": [2, 2],
                                           "data_offsets": [0, 32]}}, np.eye(2).tobytes())
    asym = np.random.default_rng(1).standard_normal((4, 4))
    return {
        # --- .npy: broken containers ---
        "empty.npy": refuse(b"", EMPTY, "zero bytes"),
        "truncated.npy": refuse(good[: len(good) // 2], CORRUPT, "data cut in half"),
        "truncated_header.npy": refuse(good[:20], CORRUPT, "cut inside the header"),
        "wrong_magic.npy": refuse(b"\x93NUMPX" + good[6:], CORRUPT, "magic string altered"),
        "text.npy": refuse(b"this is not an array\n", CORRUPT, "plain text"),
        "bad_header_dict.npy": refuse(
            npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': 'abc', }"),
            CORRUPT, "shape is a string"),
        "header_code.npy": refuse(
            npy_with_header("__import__('os').system('echo pwned')"), CORRUPT,
            "header is code, not a literal dictionary"),
        "unknown_version.npy": refuse(
            b"\x93NUMPY\x09\x09" + good[8:], CORRUPT, "format version 9.9"),
        "huge_header_length.npy": refuse(
            b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{}", CORRUPT,
            "v2 header claims 4 GiB"),
        "negative_shape.npy": refuse(
            npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (-4, -4), }",
                            bytes(128)), r".", "negative dimensions"),
        "object_array.npy": refuse(
            npy(np.array([1.0, "two", None], dtype=object), allow_pickle=True), DTYPE + "|pickl",
            "object array: the data is a pickle"),
        "safetensors_inside.npy": refuse(st_good, CORRUPT, ".npy name, safetensors bytes"),
        # --- .npy: sizes refused from the header alone ---
        "huge_shape.npy": refuse(
            npy_with_header("{'descr': '<f8', 'fortran_order': False, "
                            "'shape': (1000000, 1000000), }", bytes(64)), TOO_BIG,
            "declares 10^6 × 10^6 (8 TB) in a tiny file"),
        "huge_vector.npy": refuse(
            npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (100000000,), }",
                            bytes(64)), TOO_BIG, "declares 10^8 eigenvalues"),
        # --- .npy: wrong shapes ---
        "scalar_0d.npy": refuse(npy(np.array(3.0)), SHAPE, "0-d array"),
        "cube_3d.npy": refuse(npy(np.ones((2, 2, 2))), SHAPE, "3-d array"),
        "nonsquare.npy": refuse(npy(np.ones((3, 4))), SHAPE, "3 × 4 matrix"),
        "zero_length.npy": refuse(npy(np.zeros(0)), EMPTY, "no eigenvalues"),
        "zero_by_zero.npy": refuse(npy(np.zeros((0, 0))), EMPTY, "0 × 0 matrix"),
        # --- .npy: wrong dtypes ---
        "complex.npy": refuse(npy(np.array([[2, 1j], [-1j, 2]])), DTYPE, "complex Hermitian"),
        "string.npy": refuse(npy(np.array(["1.0", "2.0"])), DTYPE, "unicode strings"),
        "bytes.npy": refuse(npy(np.array([b"1.0", b"2.0"])), DTYPE, "byte strings"),
        "bool.npy": refuse(npy(np.eye(3, dtype=bool)), DTYPE, "boolean identity"),
        "structured.npy": refuse(
            npy(np.zeros(3, dtype=[("a", "<f8"), ("b", "<f8")])), DTYPE, "record dtype"),
        "datetime.npy": refuse(npy(np.zeros(3, dtype="M8[s]")), DTYPE, "datetime64"),
        # --- .npy: well-formed arrays that are not a covariance ---
        "nan.npy": refuse(npy(np.where(np.eye(3) > 0, np.nan, 0.0)), r"NaN|infinite",
                          "NaN on the diagonal"),
        "inf.npy": refuse(npy(np.array([np.inf, 1.0, 0.5])), r"NaN|infinite",
                          "infinite eigenvalue"),
        "asymmetric.npy": refuse(npy(asym), r"symmetric", "random 4 × 4 matrix"),
        "indefinite.npy": refuse(npy(np.array([[1.0, 2.0], [2.0, 1.0]])),
                                 r"semidefinite|negative", "eigenvalues 3 and -1"),
        "negative_eigenvalues.npy": refuse(npy(np.array([3.0, 1.0, -0.5])),
                                           r"semidefinite|negative",
                                           "eigenvalue vector with a negative entry"),
        "negative_diagonal.npy": refuse(npy(-np.eye(3)), r"semidefinite|negative",
                                        "-I"),
        # --- names the loader cannot dispatch on ---
        "wrong_extension.txt": refuse(good, r"extension|not a source",
                                      "valid .npy bytes named .txt"),
        "no_extension": refuse(good, r"extension|not a source", "no suffix at all"),
        # --- .npz ---
        "not_a_zip.npz": refuse(b"PK\x03\x04" + bytes(60), CORRUPT, "zip magic, then zeros"),
        "truncated.npz": refuse(zip_bytes({"sigma.npy": good})[:300], CORRUPT,
                                "zip cut before its directory"),
        "empty_zip.npz": refuse(zip_bytes({}), EMPTY, "a zip with no members"),
        "npz_object_member.npz": refuse(
            zip_bytes({"sigma.npy": npy(np.array([{"a": 1}], dtype=object), True)}),
            DTYPE + "|pickl", "member is an object array"),
        "npz_huge_shape.npz": refuse(
            zip_bytes({"sigma.npy": npy_with_header(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }",
                bytes(64))}, zipfile.ZIP_DEFLATED), TOO_BIG, "member declares 10^5 × 10^5"),
        "npz_bomb.npz": refuse(npz_bomb(), CORRUPT + "|" + TOO_BIG + "|size|match",
                               "8 × 8 header but the member inflates to 32 MiB"),
        "npz_ambiguous.npz": refuse(
            zip_bytes({"a.npy": npy(np.eye(2)), "b.npy": npy(np.eye(3))}), r"several",
            "two arrays, neither has a known name"),
        # --- .safetensors ---
        "st_header_len_huge.safetensors": refuse(safetensors_bytes({}, length=2**63), CORRUPT,
                                                 "header length 2^63"),
        "st_header_len_past_eof.safetensors": refuse(
            safetensors_bytes({"sigma": {"dtype": "F64", "shape": [2, 2],
                                         "data_offsets": [0, 32]}}, np.eye(2).tobytes(),
                              length=500), CORRUPT, "header length past the end"),
        "st_header_not_json.safetensors": refuse(safetensors_bytes(b"{not json"), CORRUPT,
                                                 "header is not JSON"),
        "st_header_list.safetensors": refuse(safetensors_bytes(b"[1, 2, 3]"), CORRUPT,
                                             "header is a JSON list"),
        "st_entry_not_dict.safetensors": refuse(safetensors_bytes({"sigma": 5}), r".",
                                                "tensor entry is a number"),
        "st_offsets_past_eof.safetensors": refuse(
            safetensors_bytes({"sigma": {"dtype": "F64", "shape": [2000, 2000],
                                         "data_offsets": [0, 32_000_000]}}, bytes(32)),
            CORRUPT, "offsets point 32 MB past the end"),
        "st_offsets_mismatch.safetensors": refuse(
            safetensors_bytes({"sigma": {"dtype": "F64", "shape": [4, 4],
                                         "data_offsets": [0, 8]}}, bytes(8)), CORRUPT,
            "offsets hold 1 value for a 4 × 4 shape"),
        "st_huge_shape.safetensors": refuse(
            safetensors_bytes({"sigma": {"dtype": "F64", "shape": [1000000, 1000000],
                                         "data_offsets": [0, 8]}}, bytes(8)), TOO_BIG,
            "declares 10^6 × 10^6"),
        "st_negative_shape.safetensors": refuse(
            safetensors_bytes({"sigma": {"dtype": "F64", "shape": [-3],
                                         "data_offsets": [24, 0]}}, bytes(24)), r".",
            "negative dimension with matching negative offsets"),
        "st_bool.safetensors": refuse(
            safetensors_bytes({"sigma": {"dtype": "BOOL", "shape": [2, 2],
                                         "data_offsets": [0, 4]}}, b"\x01\x00\x00\x01"), DTYPE,
            "boolean tensor"),
        "st_no_tensors.safetensors": refuse(safetensors_bytes({"__metadata__": {"a": "b"}}),
                                            EMPTY, "metadata only"),
        "st_3d.safetensors": refuse(
            safetensors_bytes({"sigma": {"dtype": "F64", "shape": [2, 2, 2],
                                         "data_offsets": [0, 64]}}, bytes(64)), SHAPE,
            "3-d tensor"),
        "st_too_short.safetensors": refuse(b"\x05\x00", CORRUPT, "two bytes"),
        # --- .pt / .pth (nothing here acts when unpickled; the tests build those) ---
        "empty.pt": refuse(b"", EMPTY, "zero bytes"),
        "truncated.pt": refuse(torch_bytes(torch.eye(4, dtype=torch.float64))[:400], CORRUPT,
                               "zip cut short"),
        "random_bytes.pt": refuse(np.random.default_rng(2).bytes(256), CORRUPT,
                                  "256 random bytes"),
        "npy_inside.pt": refuse(good, CORRUPT, ".pt name, .npy bytes"),
        "list.pt": refuse(torch_bytes([1.0, 2.0, 3.0]), r"list|tensor",
                          "a list of floats, not a tensor"),
        "fraction.pth": refuse(pickle.dumps(Fraction(1, 3), protocol=2), CORRUPT + "|pickl",
                               "plain pickle of a non-tensor class"),
        "complex.pt": refuse(torch_bytes(torch.eye(2, dtype=torch.complex64)), DTYPE,
                             "complex tensor"),
        "cube_3d.pt": refuse(torch_bytes(torch.ones(2, 2, 2)), SHAPE, "3-d tensor"),
        "sparse.pt": refuse(torch_bytes(torch.eye(3).to_sparse()), r"sparse|dense",
                            "sparse COO identity"),
        "no_tensors.pt": refuse(torch_bytes({"note": "hello"}), EMPTY, "dict without tensors"),
        # --- odd but loadable: accepted, with a note where something was changed ---
        "all_zero.npy": accept(npy(np.zeros((4, 4))), r"zero",
                               "valid but degenerate: nothing to quantize"),
        "all_zero_vector.npy": accept(npy(np.zeros(5)), r"zero", "all eigenvalues 0"),
        "n1_matrix.npy": accept(npy(np.array([[2.0]])), None, "1 × 1 matrix is a valid Σ_X"),
        "n1_vector.npy": accept(npy(np.array([2.0])), None, "one eigenvalue"),
        "integer.npy": accept(npy(np.array([[2, 1], [1, 2]])), r"integer",
                              "int64 matrix: converted with a note"),
        "rounding_negative.npy": accept(npy(np.array([1.0, 0.5, -1e-12])), r"clipped",
                                        "a -1e-12 eigenvalue is rounding noise"),
        "float16.npy": accept(npy(psd(4).astype(np.float16)), None, "half precision"),
        "tiny_asymmetry.npy": accept(npy(psd(4) + 1e-9 * np.triu(np.ones((4, 4)), 1)), None,
                                     "1e-9 skew is symmetrised silently"),
    }


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    manifest = {}
    for name, entry in sorted(corpus().items()):
        (OUT / name).write_bytes(entry.pop("data"))
        manifest[name] = entry
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(manifest)} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
