"""The Σ_X container shared by every part of wfviz."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPECTRUM_ROTATIONS = ("haar", "eigenbasis")
"""Rotations defined without the native basis: a Haar rotation of diag(λ), and the eigenbasis."""


@dataclass(frozen=True, eq=False)
class Covariance:
    """A layer-input second moment Σ_X = E[x xᵀ] (not mean-centred), or only its spectrum.

    Parameters
    ----------
    eigenvalues : ndarray, shape (n,)
        Eigenvalues of Σ_X in descending order, float64, all >= 0.
    matrix : ndarray, shape (n, n), optional
        The full symmetric PSD matrix in its native basis, float64. ``None`` for an
        eigenvalues-only source, which supports every feature that needs no basis
        (waterfilling, Haar and eigenbasis predictions).
    label : str
        What the data is, shown in the UI and CLI (e.g. "SmolLM2-135M block 3 down_proj input").
    source_id : str
        A short stable key (file sha256, bundle layer id, synthetic spec) used for caching.
    notes : tuple of str
        Things the loader did that the user should know (e.g. clipped tiny negative eigenvalues).
    d_by_rotation : dict
        Precomputed Cholesky diagonals d = diag(L)² keyed by rotation name, for bundle layers
        without a full matrix, in WaterSIC's order (``d_j = Var(X_j | X_<j)``).
    d_gptq_by_rotation : dict
        The same in GPTQ's order (``d_j = Var(X_j | X_>j)``; bundle format 2 and later).
    diagonal : ndarray, optional
        diag(Σ_X) when known without the full matrix (bundles).
    """

    eigenvalues: np.ndarray
    matrix: np.ndarray | None = None
    label: str = ""
    source_id: str = ""
    notes: tuple[str, ...] = ()
    d_by_rotation: dict = field(default_factory=dict)
    d_gptq_by_rotation: dict = field(default_factory=dict)
    diagonal: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.eigenvalues.shape[0])

    @property
    def is_full(self) -> bool:
        return self.matrix is not None

    @property
    def diag(self) -> np.ndarray | None:
        if self.matrix is not None:
            return np.diag(self.matrix).copy()
        return self.diagonal

    def supports(self, rotation: str, *, quantize: bool = True) -> bool:
        """Whether ``rotation`` can be used with this source.

        Quantizing needs the native basis (the full matrix) except for the
        :data:`SPECTRUM_ROTATIONS`, where ``diag(λ)`` stands for Σ. Predictions
        (``quantize=False``) can also use the Cholesky diagonals a bundle stored.

        Examples
        --------
        >>> cov = Covariance(eigenvalues=np.array([2.0, 1.0]), d_by_rotation={"identity": None})
        >>> cov.supports("haar"), cov.supports("identity"), cov.supports("identity",
        ...                                                                quantize=False)
        (True, False, True)
        """
        if self.is_full or rotation in SPECTRUM_ROTATIONS:
            return True
        return not quantize and rotation in self.d_by_rotation

    def unsupported_reason(self, rotation: str, *, quantize: bool = True) -> str | None:
        """None when :meth:`supports` says yes; else the one sentence that says why not.

        Examples
        --------
        >>> Covariance(eigenvalues=np.array([1.0])).unsupported_reason("hadamard")[:40]
        'The hadamard rotation needs the native b'
        """
        if self.supports(rotation, quantize=quantize):
            return None
        return (f"The {rotation} rotation needs the native basis (the full Σ_X matrix), but this "
                f"source has only its eigenvalues; use {' or '.join(SPECTRUM_ROTATIONS)}, or a "
                f"source with the full matrix.")
