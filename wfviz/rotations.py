"""Orthogonal changes of basis for Σ_X and W: identity, Haar, randomized Hadamard, KLT, act-order.

A rotation ``Q`` acts on the statistics as ``Σ → Q Σ Qᵀ`` and on the weights as ``W → W Qᵀ``, so
that ``(W Qᵀ)(Q x) = W x``: the rotated layer computes the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .errors import WfvizError

ROTATIONS = {
    "identity": "The native basis: no rotation.",
    "haar": "A Haar-random orthogonal matrix (QR of a Gaussian with the sign fix), seeded.",
    "hadamard": "Randomized Hadamard H·diag(±1)/√n from Sylvester and Paley blocks, seeded.",
    "eigenbasis": "The Karhunen–Loève basis: Σ becomes diagonal and d = λ (needs the full Σ).",
    "act_order": "GPTQ's act-order: columns sorted by descending diag(Σ) (needs the diagonal).",
}

# Kronecker factors are kept at most this large so that applying them stays cheap.
_MAX_POW2_FACTOR = 64


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % k for k in range(2, int(q**0.5) + 1))


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = χ(j − i), with χ the quadratic character of GF(q), q prime."""
    squares = np.zeros(q, dtype=bool)
    squares[(np.arange(1, q) ** 2) % q] = True
    chi = np.where(squares, 1.0, -1.0)
    chi[0] = 0.0
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley_order(m: int) -> str | None:
    if m >= 4 and _is_prime(m - 1) and (m - 1) % 4 == 3:
        return "I"
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return "II"
    return None


@lru_cache(maxsize=32)
def _paley(m: int) -> np.ndarray:
    """A ±1 Hadamard matrix of order m by Paley's construction I or II."""
    kind = _paley_order(m)
    if kind == "I":
        q = m - 1
        s = np.zeros((m, m))
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
        return np.eye(m) + s
    q = m // 2 - 1
    c = np.zeros((q + 1, q + 1))
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
    zero_block = np.array([[1.0, -1.0], [-1.0, -1.0]])
    one_block = np.array([[1.0, 1.0], [1.0, -1.0]])
    return np.kron(c, one_block) + np.kron(c == 0, zero_block)


@lru_cache(maxsize=32)
def _sylvester(p: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard_factors(n: int) -> tuple[int, int] | None:
    """Split ``n = m · 2^k`` with a Paley (or trivial, m = 1) Hadamard matrix of order ``m``.

    Returns ``(m, 2**k)`` with the smallest such ``m``, or ``None`` when no Sylvester × Paley
    construction exists for ``n``.

    Examples
    --------
    >>> hadamard_factors(14336), hadamard_factors(1536), hadamard_factors(576)
    ((28, 512), (12, 128), (36, 16))
    >>> hadamard_factors(9) is None
    True
    """
    if n < 1:
        return None
    p = n & -n  # largest power of two dividing n
    m = n // p
    while True:
        if m == 1 or _paley_order(m):
            return m, p
        if p == 1:
            return None
        m, p = m * 2, p // 2


def _pow2_factors(p: int) -> list[np.ndarray]:
    factors = []
    while p > 1:
        d = min(p, _MAX_POW2_FACTOR)
        factors.append(_sylvester(d))
        p //= d
    return factors


def hadamard_matrix(n: int) -> np.ndarray:
    """A dense ±1 Hadamard matrix ``H`` of order ``n`` (``H Hᵀ = n I``), float64.

    Built as a Kronecker product of a Paley block and Sylvester blocks; raises ``WfvizError``
    when no such construction exists for ``n``.

    Examples
    --------
    >>> h = hadamard_matrix(12)
    >>> bool(np.allclose(h @ h.T, 12 * np.eye(12)))
    True
    """
    split = hadamard_factors(n)
    if split is None:
        raise WfvizError(f"No Sylvester×Paley Hadamard matrix of order {n} is known here; "
                         "use the 'hadamard' rotation, which falls back to Hadamard ⊗ Haar.")
    m, p = split
    h = _paley(m) if m > 1 else np.ones((1, 1))
    for f in _pow2_factors(p):
        h = np.kron(h, f)
    return h


def _haar(n: int, rng: np.random.Generator) -> np.ndarray:
    # torch's QR is several times faster than numpy's here; the Gaussian stays numpy-seeded.
    # geqrf + householder_product hold at most two n×n arrays at a time (qr holds four), which
    # keeps n = 14336 (1.6 GB per float64 matrix) inside a laptop's memory.
    a, tau = torch.geqrf(torch.from_numpy(rng.standard_normal((n, n))))
    signs = torch.sign(torch.diagonal(a))
    q = torch.linalg.householder_product(a, tau)
    del a
    return q.mul_(signs).numpy()


_CACHED_HAAR_MAX_N = 2048


@lru_cache(maxsize=4)
def _cached_haar(n: int, seed: int) -> np.ndarray:
    return _haar(n, np.random.default_rng(seed))


def _seeded_haar(n: int, seed: int) -> np.ndarray:
    """The Haar matrix of ``seed``; up to n = 2048 the last four are kept (≤ 128 MB), because a
    QR of that size is a large part of an interactive sweep and the app asks again and again."""
    if n <= _CACHED_HAAR_MAX_N:
        return _cached_haar(n, int(seed)).copy()  # a copy: no caller can change the cache
    return _haar(n, np.random.default_rng(seed))


@dataclass(frozen=True, eq=False)
class Rotation:
    """An orthogonal ``Q`` of size ``n``, stored in the cheapest exact form.

    Exactly one of ``dense`` (n×n), ``perm`` (a permutation) or ``factors`` + ``signs``
    (``Q = (F_1 ⊗ … ⊗ F_r)·diag(signs)`` with orthogonal factors) is set; none means identity.
    Arrays may be numpy or torch; results keep the input's type, device and dtype.
    """

    name: str
    label: str
    n: int
    dense: np.ndarray | None = None
    perm: np.ndarray | None = None
    factors: tuple[np.ndarray, ...] = ()
    signs: np.ndarray | None = None

    def apply_weight(self, W):
        """Return ``W Qᵀ`` (each row ``w`` becomes ``Q w``)."""
        return self._rows(W, transpose=False)

    def unapply_weight(self, Wr):
        """Return ``Wr Q``, undoing :meth:`apply_weight`."""
        return self._rows(Wr, transpose=True)

    def apply_sigma(self, S):
        """Return ``Q S Qᵀ``.

        ``S Qᵀ`` is formed once and then overwritten a block of columns at a time with
        ``Q (S Qᵀ)`` (column block j of the result needs only column block j of ``S Qᵀ``), so
        at most two n×n arrays are alive besides S: at n = 14336 each one is 1.6 GB.
        """
        out = self.apply_weight(S)  # S Qᵀ
        for j in range(0, self.n, 1024):
            out[:, j:j + 1024] = self.apply_weight(out[:, j:j + 1024].T).T
        return out

    @property
    def is_identity(self) -> bool:
        """Whether ``Q = I`` (nothing to apply)."""
        return self.dense is None and self.perm is None and not self.factors

    def apply_layer(self, W, S):
        """``(W Qᵀ, Q S Qᵀ)``; the identity returns ``W`` and ``S`` themselves (no copies; don't
        mutate them)."""
        if self.is_identity:
            return W, S
        return self.apply_weight(W), self.apply_sigma(S)

    def matrix(self) -> np.ndarray:
        """The dense ``Q`` (for small n and tests)."""
        return self.apply_weight(np.eye(self.n)).T

    def _rows(self, X, *, transpose: bool):
        is_numpy = not isinstance(X, torch.Tensor)
        X = np.asarray(X) if is_numpy else X
        # Transposed views (apply_sigma passes half.T) make the factor matmuls ~10x slower.
        t = (torch.from_numpy(np.asarray(X, dtype=np.float64)) if is_numpy else X).contiguous()
        if t.shape[-1] != self.n:
            raise WfvizError(f"The rotation has size {self.n} but the array has {t.shape[-1]} "
                             "columns; build the rotation for the matrix's size.")
        out = self._rows_torch(t, transpose)
        if not is_numpy:
            return out
        # numpy inputs are rotated in float64 and handed back in their own float precision.
        kind = X.dtype if np.issubdtype(X.dtype, np.floating) else np.float64
        return out.numpy().astype(kind, copy=False)

    def _rows_torch(self, t: torch.Tensor, transpose: bool) -> torch.Tensor:
        def as_t(a):
            return torch.as_tensor(a, dtype=t.dtype, device=t.device)

        if self.dense is not None:
            q = as_t(self.dense)
            return t @ q if transpose else t @ q.T
        if self.perm is not None:
            idx = torch.as_tensor(np.argsort(self.perm) if transpose else self.perm,
                                  device=t.device)
            return t[..., idx]
        if not self.factors:
            return t.clone()
        signs = as_t(self.signs)
        x = t if transpose else t * signs
        lead = x.shape[:-1]
        dims = [f.shape[0] for f in self.factors]
        x = x.reshape(*lead, *dims)
        for axis, f in enumerate(self.factors, start=len(lead)):
            m = as_t(f)
            x = (x.movedim(axis, -1) @ (m if transpose else m.T)).movedim(-1, axis)
        x = x.reshape(*lead, self.n)
        return x * signs if transpose else x


def _largest_hadamard_divisor(n: int) -> int:
    """The largest divisor of ``n`` that has a Sylvester × Paley Hadamard matrix (at least 1)."""
    return max(d for d in range(1, n + 1) if n % d == 0 and hadamard_factors(d) is not None)


def _hadamard_factors_normalized(d: int) -> list[np.ndarray]:
    m, p = hadamard_factors(d)
    base = [_paley(m)] if m > 1 else []
    return [f / np.sqrt(f.shape[0]) for f in base + _pow2_factors(p)]


def _hadamard_rotation(n: int, seed: int) -> Rotation:
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=n)
    split = hadamard_factors(n)
    if split is not None:
        m, p = split
        label = f"hadamard (H_{m}⊗H_{p})" if m > 1 else f"hadamard (H_{p})"
        return Rotation("hadamard", label, n, factors=tuple(_hadamard_factors_normalized(n)),
                        signs=signs)
    # No Hadamard of order n: mix the largest order that exists with a small Haar block, so the
    # rotation stays orthogonal and as close to Hadamard as n allows.
    d = _largest_hadamard_divisor(n)
    mix = f"Haar_{n // d}⊗H_{d}" if d > 1 else f"Haar_{n}"
    label = f"hadamard (fallback: {mix}, no Hadamard of order {n})"
    factors = [_haar(n // d, rng)] + _hadamard_factors_normalized(d)
    return Rotation("hadamard", label, n, factors=tuple(factors), signs=signs)


def _need_sigma(name: str, sigma) -> np.ndarray:
    if sigma is None:
        raise WfvizError(f"The '{name}' rotation depends on Σ itself; pass sigma= (the full "
                         "matrix, or its diagonal for act_order).")
    return np.asarray(sigma.cpu() if isinstance(sigma, torch.Tensor) else sigma, dtype=np.float64)


def get_rotation(name: str, n: int, *, seed: int = 0, sigma=None) -> Rotation:
    """Build the rotation ``name`` of size ``n``.

    Parameters
    ----------
    name : {'identity', 'haar', 'hadamard', 'eigenbasis', 'act_order'}
    n : int
        Size of Σ_X (number of weight columns).
    seed : int
        Seed for the random rotations (Haar, Hadamard signs).
    sigma : array, optional
        Σ_X, needed by 'eigenbasis' (full matrix) and 'act_order' (full matrix or its diagonal).

    Examples
    --------
    >>> import numpy as np
    >>> S = np.diag([4.0, 1.0, 9.0, 2.0])
    >>> R = get_rotation("hadamard", 4, seed=0)
    >>> bool(np.isclose(np.trace(R.apply_sigma(S)), 16.0))
    True
    >>> get_rotation("act_order", 4, sigma=S).apply_weight(np.arange(4.0)[None])
    array([[2., 0., 3., 1.]])
    """
    if name not in ROTATIONS:
        raise WfvizError(f"Unknown rotation '{name}'; choose one of {', '.join(ROTATIONS)}.")
    if name == "identity":
        return Rotation("identity", "identity", n)
    if name == "haar":
        return Rotation("haar", f"haar (seed {seed})", n, dense=_seeded_haar(n, seed))
    if name == "hadamard":
        return _hadamard_rotation(n, seed)
    s = _need_sigma(name, sigma)
    if name == "act_order":
        diag = s if s.ndim == 1 else np.diag(s)
        return Rotation("act_order", "act-order (descending diag Σ)", n,
                        perm=np.argsort(-diag, kind="stable"))
    if s.ndim != 2:
        raise WfvizError("The 'eigenbasis' rotation needs the full Σ; with eigenvalues only, "
                         "the source is already in its eigenbasis.")
    lam, u = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy(s)))
    return Rotation("eigenbasis", "eigenbasis (KLT)", n, dense=u[:, np.argsort(-lam)].T.copy())
