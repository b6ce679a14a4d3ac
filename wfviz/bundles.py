"""Bundles of real layer statistics: the on-disk format, discovery and loading.

A bundle is a directory holding ``manifest.json`` and one ``layers/b<block>_<input>.npz`` per
distinct linear-layer input of a model (format: ``sample_covariances/FORMAT.md``). Every layer
has its eigenvalues, its diagonal and its Cholesky diagonals ``d`` in the identity, Hadamard
(seed 0) and act-order bases; a few layers also store eigenvectors, from which the full Σ_X is
rebuilt exactly symmetric positive semidefinite.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .covariance import Covariance
from .errors import WfvizError

BUNDLE_FORMAT_VERSION = 2
"""Version of the bundle layout that :func:`wfviz.collect.write_bundle` writes."""

READABLE_FORMAT_VERSIONS = (1, 2)
"""Versions :func:`load_bundle` reads. Version 2 adds GPTQ-order Cholesky diagonals
(``dg_<rotation>``); a version-1 layer without a full matrix has no GPTQ-order prediction for
the identity, Hadamard and act-order bases."""

LAYER_INPUTS = ("qkv", "o", "gate_up", "down")
"""The distinct linear-layer inputs of a Llama-style decoder block."""

LAYER_INPUT_NAMES = {
    "qkv": "q/k/v_proj input",
    "o": "o_proj input",
    "gate_up": "gate/up_proj input",
    "down": "down_proj input",
}
"""Display name of each entry of :data:`LAYER_INPUTS`."""

D_ROTATIONS = ("identity", "hadamard", "act_order")
"""Bases whose Cholesky diagonal every bundle layer stores (Haar needs only eigenvalues)."""

LLAMA3_HINT = (
    "No Llama-3-8B bundle is shipped (its weights cannot be downloaded here); make one with: "
    "wfviz collect --model meta-llama/Meta-Llama-3-8B --text wiki.test.raw --tokens 131072 "
    "--seq-len 2048 --device cuda --dtype bfloat16 --full-layers 0,15,31 "
    "--out sample_covariances/llama3-8b-wikitext2"
)
"""What to tell a user looking for Llama-3-8B statistics (shown by the CLI and the app)."""

MANIFEST = "manifest.json"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "sample_covariances"


def layer_file(block: int, name: str) -> str:
    """Path of one layer's arrays inside a bundle, relative to the bundle directory.

    Examples
    --------
    >>> layer_file(3, "down")
    'layers/b003_down.npz'
    """
    return f"layers/b{block:03d}_{name}.npz"


def rebuild_sigma(eigenvalues: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Σ = Q diag(λ) Qᵀ from stored eigenvalues and (possibly low-precision) eigenvectors.

    ``Q`` is the orthonormalised ``vectors`` (QR in float64, columns in stored order, largest
    eigenvalue first), so the result is symmetric PSD with eigenvalues exactly ``λ`` whatever
    precision the vectors were stored in.

    Examples
    --------
    >>> s = rebuild_sigma(np.array([2.0, 1.0]), np.eye(2, dtype=np.float16))
    >>> s.tolist()
    [[2.0, 0.0], [0.0, 1.0]]
    """
    import torch  # only here: listing bundles needs no torch

    # torch's QR is several times faster than numpy's on this kind of machine.
    q = torch.linalg.qr(torch.from_numpy(np.asarray(vectors, dtype=np.float64)))[0].numpy()
    lam = np.asarray(eigenvalues, dtype=np.float64)
    s = (q * lam) @ q.T
    return 0.5 * (s + s.T)


@dataclass(frozen=True)
class Bundle:
    """One bundle on disk: its manifest and a lazy view of its layers.

    Attributes
    ----------
    name : str
        Directory name, used in ``bundle:<name>/<block>/<input>`` source ids.
    path : Path
        The bundle directory.
    manifest : dict
        Parsed ``manifest.json`` (provenance, settings, per-layer entries).
    """

    name: str
    path: Path
    manifest: dict = field(repr=False)

    @property
    def layers(self) -> list[tuple[int, str, int, bool]]:
        """``(block, input, n, has_full)`` for every stored layer, by block then input."""
        rows = [(e["block"], e["input"], e["n"], e["has_full"]) for e in self.manifest["layers"]]
        return sorted(rows, key=lambda r: (r[0], _input_order(r[1]), r[1]))

    @property
    def model_label(self) -> str:
        return self.manifest.get("model", {}).get("label", self.name)

    def _entry(self, block: int, name: str) -> dict:
        for e in self.manifest["layers"]:
            if e["block"] == int(block) and e["input"] == name:
                return e
        blocks = sorted({e["block"] for e in self.manifest["layers"]})
        inputs = sorted({e["input"] for e in self.manifest["layers"]}, key=_input_order)
        raise WfvizError(
            f"Bundle '{self.name}' has no layer block {block} / input '{name}'; it has blocks "
            f"{_ranges(blocks)} and inputs {', '.join(inputs)}."
        )

    def layer(self, block: int, name: str, *, full: bool = True) -> Covariance:
        """The Σ_X of one layer input as a :class:`~wfviz.covariance.Covariance`.

        Full matrix when the bundle stores eigenvectors for it (and ``full``), else eigenvalues
        with the diagonal and ``d_by_rotation`` for identity, hadamard and act_order.
        ``full=False`` skips rebuilding the matrix, for tables that need no basis.

        Examples
        --------
        >>> b = load_bundle("smollm2-135m-wikitext2")  # doctest: +SKIP
        >>> b.layer(15, "down").n  # doctest: +SKIP
        1536
        """
        entry = self._entry(block, name)
        arrays = _read_npz(self.path / entry["file"])
        lam = arrays["eigenvalues"]
        matrix = (rebuild_sigma(lam, arrays["eigenvectors"]) if entry["has_full"] and full
                  else None)
        return Covariance(
            eigenvalues=lam,
            matrix=matrix,
            label=(f"{self.model_label} · block {entry['block']} · "
                   f"{LAYER_INPUT_NAMES.get(name, name)}"),
            source_id=f"bundle:{self.name}/{entry['block']}/{name}",
            notes=tuple(entry.get("notes", ())),
            d_by_rotation={r: arrays[f"d_{r}"] for r in D_ROTATIONS if f"d_{r}" in arrays},
            d_gptq_by_rotation={r: arrays[f"dg_{r}"] for r in D_ROTATIONS
                                if f"dg_{r}" in arrays},
            diagonal=arrays["diagonal"],
        )


def _input_order(name: str) -> int:
    return LAYER_INPUTS.index(name) if name in LAYER_INPUTS else len(LAYER_INPUTS)


def _ranges(values: list[int]) -> str:
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}–{values[-1]}"
    return ", ".join(str(v) for v in values)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise WfvizError(f"Cannot read bundle file {path} ({exc}); regenerate the bundle.") from exc


def bundle_dirs() -> list[Path]:
    """Directories searched for bundles: the shipped ``sample_covariances/`` (of a checkout, or
    the copy a wheel installs under ``share/wfviz``), then ``WFVIZ_DATA``.

    ``WFVIZ_DATA`` is a ``os.pathsep``-separated list of directories, each holding bundle
    directories (for example the ``--out`` parent of ``wfviz collect``).

    Examples
    --------
    >>> bundle_dirs()[0].name
    'sample_covariances'
    """
    from .launch import data_dir

    extra = [Path(p).expanduser() for p in os.environ.get("WFVIZ_DATA", "").split(os.pathsep) if p]
    shipped = SHIPPED_DIR if SHIPPED_DIR.is_dir() else data_dir() or SHIPPED_DIR
    return [shipped, *extra]


def list_bundles() -> list[Bundle]:
    """Every readable bundle under :func:`bundle_dirs`, sorted by name (first found wins).

    Examples
    --------
    >>> [b.name for b in list_bundles()]  # doctest: +SKIP
    ['smollm2-135m-wikitext2']
    """
    found: dict[str, Bundle] = {}
    for root in bundle_dirs():
        if not root.is_dir():
            continue
        for sub in sorted(root.iterdir()):
            if (sub / MANIFEST).is_file() and sub.name not in found:
                found[sub.name] = _open_bundle(sub)
    return [found[k] for k in sorted(found)]


def load_bundle(name_or_path) -> Bundle:
    """Open a bundle by directory path or by name (searched in :func:`bundle_dirs`).

    Raises
    ------
    WfvizError
        If no such bundle exists (the message lists the bundles found) or its manifest is
        unreadable or of another format version.

    Examples
    --------
    >>> load_bundle("smollm2-135m-wikitext2").manifest["format_version"]  # doctest: +SKIP
    1
    """
    path = Path(name_or_path).expanduser()
    if (path / MANIFEST).is_file():
        return _open_bundle(path)
    for root in bundle_dirs():
        if (root / str(name_or_path) / MANIFEST).is_file():
            return _open_bundle(root / str(name_or_path))
    names = [b.name for b in list_bundles()] or ["none"]
    raise WfvizError(
        f"No bundle named '{name_or_path}'; found: {', '.join(names)} (add directories to "
        "WFVIZ_DATA or pass a bundle directory path)."
    )


def _open_bundle(path: Path) -> Bundle:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WfvizError(f"Cannot read {path / MANIFEST} ({exc}); regenerate the bundle.") from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version not in READABLE_FORMAT_VERSIONS:
        raise WfvizError(
            f"Bundle {path} has format version {version!r} but this wfviz reads versions "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}; regenerate it with 'wfviz collect'."
        )
    return Bundle(name=path.name, path=path, manifest=manifest)


def bundles_summary(bundles: list[Bundle]) -> list[dict]:
    """JSON-ready description of bundles and their layers (what ``wfviz bundles --json`` prints).

    Examples
    --------
    >>> bundles_summary([])
    []
    """
    out = []
    for b in bundles:
        m = b.manifest
        out.append({
            "name": b.name,
            "path": str(b.path),
            "model": m.get("model", {}).get("label"),
            "tokens": m.get("tokens"),
            "text": m.get("text", {}).get("name"),
            "layers": [
                {"block": blk, "input": inp, "n": n, "has_full": full}
                for blk, inp, n, full in b.layers
            ],
        })
    return out


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it (shorter, and the same
    in every checkout), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def bundles_text(bundles: list[Bundle]) -> str:
    """Human-readable listing of bundles, ending with :data:`LLAMA3_HINT`.

    Examples
    --------
    >>> bundles_text([]).splitlines()[0]
    'No bundles found.'
    """
    lines = [] if bundles else ["No bundles found."]
    for b in bundles:
        blocks = sorted({blk for blk, *_ in b.layers})
        inputs = sorted({inp for _, inp, *_ in b.layers}, key=_input_order)
        full = sorted({blk for blk, _, _, f in b.layers if f})
        m = b.manifest
        lines.append(f"{b.name}  ({_shown(b.path)})")
        lines.append(f"  model: {b.model_label}; text: {m.get('text', {}).get('name')}; "
                     f"tokens: {m.get('tokens')}")
        lines.append(f"  {len(b.layers)} layers: blocks {_ranges(blocks)} × inputs "
                     f"{', '.join(inputs)}; full matrices for blocks {_ranges(full) or 'none'}")
        lines.append(f"  use as: bundle:{b.name}/<block>/<input>")
    lines.append("")
    lines.append(LLAMA3_HINT)
    return "\n".join(lines)
