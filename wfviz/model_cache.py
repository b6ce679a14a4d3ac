"""The on-disk cache of whole-model runs: where it lives, how entries are keyed and written.

Entries are keyed by a hash of everything that decides their content (model file hashes, text
hash, token span, window length...), so a stale entry is never read back: a different input gives
a different key. Every file is written to a temporary name in its own directory and renamed into
place, so a crash leaves either the old file or the new one, never half of one. Nothing here
unpickles: arrays are ``.npz``/``.npy`` read with ``allow_pickle=False``, metadata is JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path

import numpy as np

from .errors import WfvizError

CACHE_ENV = "WFVIZ_CACHE_DIR"
"""Environment variable that moves the cache (default ``~/.cache/wfviz``)."""

_META = "__meta__"


def cache_root(path=None) -> Path:
    """The cache directory: ``path`` if given, else ``$WFVIZ_CACHE_DIR``, else ``~/.cache/wfviz``.

    Examples
    --------
    >>> str(cache_root("/tmp/wfviz-cache"))
    '/tmp/wfviz-cache'
    """
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wfviz"


def cache_key(parts: dict) -> str:
    """A short stable hash of a JSON-serialisable description (24 hex digits).

    Examples
    --------
    >>> cache_key({"a": 1, "b": [2, 3]}) == cache_key({"b": [2, 3], "a": 1})
    True
    >>> len(cache_key({}))
    24
    """
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def model_fingerprint(provenance: dict) -> dict:
    """What identifies a loaded model's weights: its file hashes, else its id and revision.

    Examples
    --------
    >>> model_fingerprint({"id": "x", "files": {"m.gguf": "ab"}, "label": "X"})
    {'files': {'m.gguf': 'ab'}}
    >>> model_fingerprint({"id": "org/m", "revision": "c0ffee"})
    {'id': 'org/m', 'revision': 'c0ffee'}
    """
    if provenance.get("files"):
        return {"files": dict(provenance["files"])}
    return {"id": provenance.get("id"), "revision": provenance.get("revision")}


@contextlib.contextmanager
def _temporary(path: Path, suffix: str):
    """A new file beside ``path`` (same file system, so the rename is atomic), opened for
    binary writing with the process's default permissions; removed if the writer fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"
    try:
        with open(tmp, "xb") as f:
            yield f
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    Examples
    --------
    >>> import tempfile
    >>> p = atomic_write_text(Path(tempfile.mkdtemp()) / "a" / "x.json", "{}")
    >>> p.read_text()
    '{}'
    """
    path = Path(path)
    with _temporary(path, ".tmp") as f:
        f.write(text.encode("utf-8"))
        tmp = Path(f.name)
    _replace(tmp, path)
    return path


def atomic_save_npy(path, array: np.ndarray) -> Path:
    """``np.save`` to ``path`` through a temporary file and a rename.

    Examples
    --------
    >>> import tempfile
    >>> p = atomic_save_npy(Path(tempfile.mkdtemp()) / "x.npy", np.arange(3))
    >>> np.load(p, allow_pickle=False).tolist()
    [0, 1, 2]
    """
    path = Path(path)
    with _temporary(path, ".npy") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        tmp = Path(f.name)
    _replace(tmp, path)
    return path


def save_arrays(path, arrays: dict, meta: dict) -> Path:
    """Write named arrays and a JSON ``meta`` dict as one uncompressed ``.npz``, atomically.

    Examples
    --------
    >>> import tempfile
    >>> p = save_arrays(Path(tempfile.mkdtemp()) / "s.npz", {"x": np.eye(2)}, {"tokens": 5})
    >>> arrays, meta = load_arrays(p)
    >>> meta["tokens"], arrays["x"].shape
    (5, (2, 2))
    """
    if _META in arrays:
        raise WfvizError(f"The array name {_META!r} is reserved for the metadata; rename it.")
    path = Path(path)
    with _temporary(path, ".npz") as f:
        np.savez(f, **arrays, **{_META: np.array(json.dumps(meta))})
        tmp = Path(f.name)
    _replace(tmp, path)
    return path


def load_arrays(path):
    """``(arrays, meta)`` of a file written by :func:`save_arrays`, or None when it is missing.

    ``arrays`` is the open ``NpzFile``: each array is read from disk only when it is indexed, so
    a caller that takes one at a time holds one at a time.

    Raises
    ------
    WfvizError
        If the file exists but cannot be read (then delete it and let it be rebuilt).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        arrays = np.load(path, allow_pickle=False)
        meta = json.loads(str(arrays[_META]))
    except (OSError, ValueError, KeyError) as exc:
        raise WfvizError(f"The cache file {path} is unreadable ({type(exc).__name__}); delete it "
                         "and run again to rebuild it.") from exc
    return arrays, meta
