"""Loading, validating and saving Σ_X files (.npy, .npz, .pt/.pth, .safetensors).

A file holds either the full symmetric ``n × n`` matrix or a 1-D vector of its eigenvalues.
Nothing is ever unpickled, and the size ``n`` is read from each format's header and checked
against ``max_n`` before the array itself is allocated, so a hostile or oversized upload fails
fast with one clear sentence instead of exhausting memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch

from .covariance import Covariance
from .errors import WfvizError

DEFAULT_MAX_N = 16384
"""Largest ``n`` accepted by default (a float64 16384² matrix is 2 GiB)."""

SUPPORTED_EXTENSIONS = (".npy", ".npz", ".pt", ".pth", ".safetensors")
PREFERRED_KEYS = ("sigma", "covariance", "eigenvalues")
"""Array names tried, in order, when a container file holds several arrays."""

_SYMMETRY_RTOL = 1e-6
_NEGATIVE_EIG_RTOL = 1e-8
_MAX_SAFETENSORS_HEADER = 100 * 2**20
_MAX_NPY_HEADER = 2**16  # numpy itself refuses headers above 10000 bytes by default
_TORCH_SLACK_BYTES = 64 * 2**20  # pickle, zip directory and small extra tensors of a .pt file
_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # decoded by hand: numpy has no bfloat16
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
}


def _dtype_note(dtype: np.dtype, label: str) -> str | None:
    """Reject dtypes that cannot hold a covariance; return a note for integer input."""
    if dtype.kind == "f":
        return None
    if dtype.kind in "iu":
        return f"{label}: integer data ({dtype}) was converted to float64."
    raise WfvizError(
        f"{label} has dtype {dtype}, which cannot hold a covariance; save it as float32 or float64."
    )


def _check_shape(shape: tuple, max_n: int, label: str) -> None:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 2):
        raise WfvizError(f"{label} has shape {shape}; expected an n × n matrix or a 1-D "
                         "eigenvalue vector.")
    if len(shape) == 2 and shape[0] != shape[1]:
        raise WfvizError(f"{label} has shape {shape}, which is not square; Σ_X must be n × n.")
    if shape[0] == 0:
        raise WfvizError(f"{label} is empty; it must hold at least one eigenvalue or a 1 × 1 "
                         "matrix.")
    if shape[0] > max_n:
        raise WfvizError(f"{label} has n = {shape[0]}, above the limit of {max_n}; raise max_n "
                         "or use a smaller layer.")


def _eig_tolerance(dtype: np.dtype, n: int) -> float:
    # Eigenvalues of a rounded PSD matrix can dip below 0 by about sqrt(n) units of rounding of
    # the dtype it was stored in; a float32 file must not be rejected for its own rounding noise.
    eps = np.finfo(dtype).eps if dtype.kind == "f" else np.finfo(np.float64).eps
    return max(_NEGATIVE_EIG_RTOL, math.sqrt(n) * float(eps))


def _symmetrized(s: np.ndarray, label: str) -> np.ndarray:
    scale = float(np.max(np.abs(s)))
    asym = float(np.max(np.abs(s - s.T)))
    if asym > _SYMMETRY_RTOL * scale:
        raise WfvizError(f"{label} is not symmetric: max |Σ - Σᵀ| = {asym:.3g} "
                         f"({asym / scale:.2g} of max |Σ|, tolerance {_SYMMETRY_RTOL:g}); save "
                         "(Σ + Σᵀ)/2 instead.")
    return 0.5 * (s + s.T)


def _spectrum(s: np.ndarray) -> np.ndarray:
    if s.ndim == 1:
        return s.copy()
    if np.count_nonzero(s) == np.count_nonzero(np.diag(s)):  # diagonal: skip the eigensolver
        return np.diag(s).copy()
    # torch's symmetric eigensolver is 2-3x faster than numpy's on this kind of machine.
    return torch.linalg.eigvalsh(torch.from_numpy(np.ascontiguousarray(s))).numpy()


def validate_covariance(array, *, label: str = "Σ_X", source_id: str = "", notes=(),
                        max_n: int = DEFAULT_MAX_N) -> Covariance:
    """Check an in-memory Σ_X (matrix or eigenvalue vector) and wrap it in a Covariance.

    Parameters
    ----------
    array : array_like, shape (n, n) or (n,)
        A symmetric PSD matrix, or its eigenvalues in any order.
    label : str
        Name used in messages and stored on the result.
    source_id : str
        Stable key stored on the result.
    notes : sequence of str
        Notes to carry over (e.g. from a loader).
    max_n : int
        Largest accepted ``n``.

    Returns
    -------
    Covariance
        float64 eigenvalues sorted descending, and the symmetrised matrix for 2-D input.

    Notes
    -----
    Asymmetry up to ``1e-6 · max|Σ|`` is removed silently by ``(Σ + Σᵀ)/2``. Eigenvalues below
    ``-tol · λ_max`` are an error, with ``tol = max(1e-8, sqrt(n) · eps(stored dtype))`` so that
    float32 and float16 files are judged by their own rounding; smaller negatives are clipped to
    0 and reported in ``notes``. Integer data is converted to float64 (with a note).

    Examples
    --------
    >>> cov = validate_covariance(np.array([[2.0, 1.0], [1.0, 2.0]]))
    >>> cov.eigenvalues.tolist()
    [3.0, 1.0]
    """
    raw = np.asarray(array)
    notes = list(notes)
    note = _dtype_note(raw.dtype, label)
    if note:
        notes.append(note)
    _check_shape(raw.shape, max_n, label)
    s = raw.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise WfvizError(f"{label} contains NaN or infinite entries; recompute or clean Σ_X.")
    if s.ndim == 2:
        s = _symmetrized(s, label)
    lam = np.sort(_spectrum(s))[::-1]
    lam_max = float(lam[0])
    tol = _eig_tolerance(raw.dtype, lam.size) * max(lam_max, 0.0)
    if lam[-1] < -tol:
        raise WfvizError(f"{label} is not positive semidefinite: smallest eigenvalue "
                         f"{lam[-1]:.3g} against largest {lam_max:.3g}; Σ_X = E[xxᵀ] must have "
                         "no negative eigenvalues.")
    negatives = int(np.count_nonzero(lam < 0))
    if negatives:
        notes.append(f"{label}: {negatives} tiny negative eigenvalue(s) down to {lam[-1]:.3g} "
                     "(rounding noise) were clipped to 0.")
        lam = np.maximum(lam, 0.0)
    if lam_max == 0:
        notes.append(f"{label}: Σ_X is all zero; there is nothing to quantize.")
    return Covariance(eigenvalues=lam, matrix=s if s.ndim == 2 else None, label=label,
                      source_id=source_id, notes=tuple(notes))


def _pick_key(keys: list[str], label: str) -> str:
    if not keys:
        raise WfvizError(f"{label} contains no arrays; save Σ_X under the name 'sigma'.")
    if len(keys) == 1:
        return keys[0]
    for key in PREFERRED_KEYS:
        if key in keys:
            return key
    raise WfvizError(f"{label} holds several arrays ({', '.join(sorted(keys))}) and none is "
                     f"named {', '.join(PREFERRED_KEYS)}; rename the one to use.")


def _read_npy_header(fp, size: int, label: str) -> tuple[tuple, np.dtype, int]:
    """Shape, dtype and header length of an .npy stream, without reading the data."""
    version = np.lib.format.read_magic(fp)
    if version not in ((1, 0), (2, 0)):
        raise WfvizError(f"{label} uses .npy format version {version}, which wfviz does not "
                         "read; re-save it with numpy.save.")
    start = fp.tell()
    # numpy allocates the declared header length before checking it: bound it here first.
    width = 2 if version == (1, 0) else 4
    (length,) = struct.unpack("<H" if width == 2 else "<I", fp.read(width).ljust(width, b"\0"))
    if length > min(_MAX_NPY_HEADER, size - start - width):
        raise WfvizError(f"{label} declares a {length}-byte .npy header that does not fit the "
                         "file; it is not a valid .npy file.")
    fp.seek(start)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    return shape, dtype, fp.tell()


def _checked_npy_header(fp, size: int, max_n: int, label: str, *, exact: bool = False) -> None:
    shape, dtype, offset = _read_npy_header(fp, size, label)
    _dtype_note(dtype, label)
    _check_shape(shape, max_n, label)
    data_bytes = math.prod(shape) * dtype.itemsize
    if size - offset < data_bytes:
        raise WfvizError(f"{label} is truncated: its header promises shape {shape} but the data "
                         "is shorter.")
    if exact and size - offset > data_bytes:
        raise WfvizError(f"{label} inflates to {size} bytes, more than its header's shape {shape} "
                         "needs; the archive is corrupt or a zip bomb.")


def _load_npy(fp, size: int, max_n: int, label: str) -> tuple[np.ndarray, str]:
    _checked_npy_header(fp, size, max_n, label)
    fp.seek(0)
    return np.load(fp, allow_pickle=False), label


def _load_npz(fp, size: int, max_n: int, label: str) -> tuple[np.ndarray, str]:
    with zipfile.ZipFile(fp) as zf:
        members = {info.filename[:-4]: info for info in zf.infolist()
                   if info.filename.endswith(".npy")}
        key = _pick_key(list(members), label)
        info = members[key]
        item = f"{label}['{key}']" if len(members) > 1 else label
        with zf.open(info) as member:
            _checked_npy_header(member, info.file_size, max_n, item, exact=True)
        with zf.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False), item


def _safetensors_header(fp, size: int, label: str) -> tuple[dict, int]:
    head = fp.read(8)
    if len(head) < 8:
        raise WfvizError(f"{label} is too short to be a safetensors file.")
    (length,) = struct.unpack("<Q", head)
    if length > min(_MAX_SAFETENSORS_HEADER, size - 8):
        raise WfvizError(f"{label} declares a {length}-byte header that does not fit the file; "
                         "it is not a valid safetensors file.")
    header = json.loads(fp.read(length).decode("utf-8"))
    if not isinstance(header, dict):
        raise WfvizError(f"{label} has a malformed safetensors header; re-save it with "
                         "safetensors.")
    header.pop("__metadata__", None)
    return header, 8 + length


def _load_safetensors(fp, size: int, max_n: int, label: str) -> tuple[np.ndarray, str]:
    header, data_start = _safetensors_header(fp, size, label)
    key = _pick_key(list(header), label)
    item = f"{label}['{key}']" if len(header) > 1 else label
    entry = header[key]
    dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise WfvizError(f"{item} has dtype {entry.get('dtype')}, which cannot hold a "
                         "covariance; save it as F32 or F64.")
    shape = tuple(entry.get("shape", ()))
    _check_shape(shape, max_n, item)
    begin, end = (int(x) for x in entry["data_offsets"])
    if end - begin != math.prod(shape) * dtype.itemsize or data_start + end > size:
        raise WfvizError(f"{item} has data offsets that do not match its shape {shape} or the "
                         "file size; the file is truncated or corrupt.")
    if entry["dtype"] == "BF16":
        fp.seek(data_start + begin)
        raw = np.frombuffer(fp.read(end - begin), dtype=dtype).astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape), item
    fp.seek(0)
    return safetensors.numpy.load(fp.read())[key], item


def _torch_member_bytes(fp) -> int:
    """Total uncompressed size declared by a zip-format .pt file (0 for the legacy format)."""
    if not zipfile.is_zipfile(fp):
        return 0
    fp.seek(0)
    with zipfile.ZipFile(fp) as zf:
        return sum(info.file_size for info in zf.infolist())


def _tensor_to_numpy(t: torch.Tensor, label: str) -> np.ndarray:
    if t.layout != torch.strided:
        raise WfvizError(f"{label} is a sparse tensor; save a dense tensor.")
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise WfvizError(f"{label} has dtype {t.dtype}, which cannot hold a covariance; save it "
                         "as float32 or float64.")
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        t = t.to(torch.float32)
    return t.detach().numpy()  # dtype kept so validation judges rounding by the stored type


def _load_torch(fp, size: int, max_n: int, label: str) -> tuple[np.ndarray, str]:
    bound = 2 * 8 * max_n * max_n + _TORCH_SLACK_BYTES
    if max(size, _torch_member_bytes(fp)) > bound:
        raise WfvizError(f"{label} is larger than any Σ_X with n <= {max_n} would need; raise "
                         "max_n or save only Σ_X.")
    fp.seek(0)
    try:
        obj = torch.load(fp, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own text would advise weights_only=False: never do that
        message = (f"Could not read {label} as a weights-only torch file; it is corrupt or holds "
                   "Python objects other than tensors, which wfviz never unpickles.")
        raise WfvizError(message) from exc
    if isinstance(obj, torch.Tensor):
        tensor, item = obj, label
    elif isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        key = _pick_key(list(tensors), label)
        tensor = tensors[key]
        item = f"{label}['{key}']" if len(tensors) > 1 else label
    else:
        raise WfvizError(f"{label} holds a {type(obj).__name__}, not a tensor or a dict of "
                         "tensors; save Σ_X with torch.save(tensor).")
    _check_shape(tuple(tensor.shape), max_n, item)
    return _tensor_to_numpy(tensor, item), item


_READERS = {
    ".npy": _load_npy,
    ".npz": _load_npz,
    ".pt": _load_torch,
    ".pth": _load_torch,
    ".safetensors": _load_safetensors,
}


def _extension(name: str) -> str:
    ext = Path(name).suffix.lower()
    if ext not in _READERS:
        raise WfvizError(f"'{name}' has an unsupported extension; use one of "
                         f"{', '.join(_READERS)}.")
    return ext


def _open_source(path_or_bytes, name: str | None) -> tuple[io.IOBase, str, str]:
    """Binary stream, display name and extension of a path or an in-memory upload."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        if not name:
            raise WfvizError("Raw bytes need a file name (name=...) to tell their format.")
        return io.BytesIO(bytes(path_or_bytes)), Path(name).name, _extension(name)
    path = Path(path_or_bytes)
    ext = _extension(name or path.name)
    if not path.is_file():
        raise WfvizError(f"File not found: '{path}'; give the path of an existing Σ_X file.")
    return open(path, "rb"), path.name, ext  # closed by load_covariance


def _sha256(fp) -> str:
    fp.seek(0)
    digest = hashlib.sha256()
    for chunk in iter(lambda: fp.read(2**20), b""):
        digest.update(chunk)
    fp.seek(0)
    return "sha256:" + digest.hexdigest()


def load_covariance(path_or_bytes, *, name: str | None = None,
                    max_n: int = DEFAULT_MAX_N) -> Covariance:
    """Load Σ_X (full matrix or eigenvalues) from a file path or the bytes of an upload.

    Parameters
    ----------
    path_or_bytes : str, Path or bytes
        A ``.npy``, ``.npz``, ``.pt``/``.pth`` or ``.safetensors`` file, or its raw bytes.
    name : str, optional
        File name whose extension tells the format; required for bytes.
    max_n : int
        Largest accepted ``n``, checked from the header before the data is read.

    Returns
    -------
    Covariance
        ``label`` is the file name (with the array name if one was picked among several) and
        ``source_id`` is the sha256 of the file.

    Raises
    ------
    WfvizError
        For every unreadable, corrupt, oversized or invalid file, with one sentence.

    Examples
    --------
    >>> import io
    >>> buf = io.BytesIO(); np.save(buf, np.array([1.0, 3.0]))
    >>> load_covariance(buf.getvalue(), name="spectrum.npy").eigenvalues.tolist()
    [3.0, 1.0]
    """
    fp, label, ext = _open_source(path_or_bytes, name)
    with fp:
        fp.seek(0, io.SEEK_END)
        size = fp.tell()
        if size == 0:
            raise WfvizError(f"{label} is empty; upload a file that holds Σ_X.")
        source_id = _sha256(fp)
        try:
            array, item = _READERS[ext](fp, size, max_n, label)
        except WfvizError:
            raise
        except Exception as exc:  # any library failure on a corrupt file becomes one sentence
            detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise WfvizError(f"Could not read {label} as a {ext} file ({detail}); check that it "
                             "is complete and was saved with the matching library.") from exc
    return validate_covariance(array, label=item, source_id=source_id, max_n=max_n)


def save_covariance(path, array) -> Path:
    """Write Σ_X (matrix or eigenvalues) in the format given by the path's extension.

    Container formats store it under ``"sigma"`` (matrix) or ``"eigenvalues"`` (vector);
    ``.pt`` files hold the bare tensor.

    Parameters
    ----------
    path : str or Path
        Destination ending in ``.npy``, ``.npz``, ``.pt``, ``.pth`` or ``.safetensors``.
    array : array_like or Covariance
        A matrix, an eigenvalue vector, or a Covariance (its matrix if full, else eigenvalues).

    Returns
    -------
    Path
        The path written.

    Examples
    --------
    >>> import tempfile, os
    >>> out = save_covariance(os.path.join(tempfile.mkdtemp(), "s.npz"), np.eye(2))
    >>> load_covariance(out).n
    2
    """
    if isinstance(array, Covariance):
        array = array.matrix if array.is_full else array.eigenvalues
    arr = np.ascontiguousarray(np.asarray(array, dtype=np.float64))
    _check_shape(arr.shape, 2**62, "The array to save")
    path = Path(path)
    ext = _extension(path.name)
    key = "sigma" if arr.ndim == 2 else "eigenvalues"
    if ext == ".safetensors":
        safetensors.numpy.save_file({key: arr}, str(path))
    elif ext in (".pt", ".pth"):
        torch.save(torch.from_numpy(arr), path)
    else:
        with open(path, "wb") as fp:
            if ext == ".npy":
                np.save(fp, arr)
            else:
                np.savez(fp, **{key: arr})
    return path
