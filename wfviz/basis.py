"""The basis a quantizer works in: the live features of Σ, rotated.

Dead features (:func:`wfviz.validation.dead_mask`) carry no signal: their weights cannot change
the output. They are taken out *before* any rotation, and every method then works on the
``m`` live features in the rotated basis. Rotating first would spread the null space of Σ over
every coordinate, where a Cholesky needs damping to factor it and a method codes weight
components that do not matter, so that the same Σ would give different answers in different
bases; taken out first, the null space is treated the same way in every basis and WaterSIC
stays basis-free on rank-deficient Σ. Dead columns come back as exact zeros, and each costs
its index in side information (16 bits).

:class:`WorkingBasis` also measures distortions of reconstructions made in it, exactly as in the
original basis: ``tr(E Σ Eᵀ)`` over all ``n`` features, the dead ones included (their weights
are not reproduced, and a feature just below the threshold still adds a little).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import WfvizError
from .quantizers.base import SIDE_INFO_BITS
from .rotations import Rotation, get_rotation
from .validation import DEAD_THRESHOLD, dead_mask


@dataclass(eq=False)
class WorkingBasis:
    """Weights and Σ of one layer on its live features, rotated by ``rotation``.

    Attributes
    ----------
    n : int
        Features of the layer.
    live : torch.Tensor or None
        Indices of the live features, or None when every feature is live.
    rotation : Rotation
        The rotation of the live block (size ``m``).
    W : torch.Tensor, shape (a, m)
        ``W_live Qᵀ``.
    S : torch.Tensor, shape (m, m)
        ``Q Σ_live Qᵀ``.
    dead_W : torch.Tensor or None, shape (a, n − m)
        The weights of the dead features (they are not reproduced).
    cross : torch.Tensor or None, shape (n − m, m)
        ``Σ_dead,live Qᵀ``, for the exact distortion.
    S_dead : torch.Tensor or None, shape (n − m, n − m)
    """

    n: int
    live: torch.Tensor | None
    rotation: Rotation
    W: torch.Tensor
    S: torch.Tensor
    dead_W: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    S_dead: torch.Tensor | None = None

    @property
    def m(self) -> int:
        """Live features."""
        return int(self.S.shape[0])

    @property
    def dead(self) -> int:
        """Dead features."""
        return self.n - self.m

    @property
    def dead_side_bits(self) -> float:
        """Side information of the dead features: one 16-bit index each."""
        return SIDE_INFO_BITS * self.dead

    def method_rate(self, rate: float, integer_rates: bool) -> float:
        """The rate to ask of a method on the live block for ``rate`` bits per layer weight.

        Grid methods (``integer_rates``) keep their whole number of bits; entropy-coded ones
        are asked for the bits that, with the dead features' indices, make ``rate`` overall.

        Examples
        --------
        >>> b = working_basis(torch.ones(4, 3), torch.diag(torch.tensor([1.0, 1.0, 0.0])))
        >>> b.method_rate(3.0, False), b.method_rate(3, True)
        (2.5, 3)
        """
        if integer_rates or not self.dead:
            return rate
        a = self.W.shape[0]
        return (rate * a * self.n - self.dead_side_bits) / (a * self.m)

    def layer_rate(self, method_rate: float) -> float:
        """Bits per layer weight of a result measured at ``method_rate`` on the live block."""
        if not self.dead:
            return method_rate
        a = self.W.shape[0]
        return (method_rate * a * self.m + self.dead_side_bits) / (a * self.n)

    def to_original(self, W_hat: torch.Tensor) -> torch.Tensor:
        """A reconstruction made in this basis, in the layer's original basis (a × n)."""
        W_live = W_hat if self.rotation.is_identity else self.rotation.unapply_weight(W_hat)
        if self.live is None:
            return W_live
        out = W_live.new_zeros((W_live.shape[0], self.n))
        return out.index_copy_(1, self.live.to(out.device), W_live)

    def distortions(self, W_hats) -> list[float]:
        """``tr((W−Ŵ)Σ(W−Ŵ)ᵀ)/(a·n)`` of each reconstruction made in this basis, float64.

        All errors are stacked into one weighted product (:func:`weighted_errors`); the dead
        features add ``2⟨W_d Σ_dl Qᵀ, E⟩ + tr(W_d Σ_dd W_dᵀ)``.
        """
        W = self.W.to(torch.float64)
        E = torch.cat([W - Wh.to(W.device, torch.float64) for Wh in W_hats]) \
            if len(W_hats) > 1 else W - W_hats[0].to(W.device, torch.float64)
        return self._totals(E, weighted_errors(E, self.S), len(W_hats))

    def energy(self) -> float:
        """``tr(W Σ Wᵀ)/(a·n)`` of the layer's own weights.

        The products run in float32 with float64 sums over the rows (relative error of order
        1e-6: this is the scale of a relative distortion, not a distortion); only the errors
        of reconstructions, which the SIC concentrates where Σ is small, need float64.
        """
        W = self.W.to(torch.float64)
        return self._totals(W, weighted_errors(W, self.S, dtype=torch.float32), 1)[0]

    def _totals(self, E: torch.Tensor, per_row: torch.Tensor, count: int) -> list[float]:
        if self.dead_W is not None:
            Wd = self.dead_W.to(torch.float64)
            lin = (Wd @ self.cross).repeat(count, 1)
            per_row = per_row + 2 * (lin * E).sum(1) + ((Wd @ self.S_dead) * Wd).sum(1).repeat(
                count)
        total = per_row.reshape(count, -1).sum(1) / (self.W.shape[0] * self.n)
        return total.tolist()


def working_basis(W: torch.Tensor, S: torch.Tensor, rotation: str = "identity", *,
                  seed: int = 0, dead_threshold: float = DEAD_THRESHOLD) -> WorkingBasis:
    """Take out the dead features of ``S`` and rotate the live block of ``W`` and ``S``.

    Parameters
    ----------
    W : torch.Tensor, shape (a, n)
    S : torch.Tensor, shape (n, n), float64
    rotation : str
        A name of :data:`wfviz.rotations.ROTATIONS`, applied to the live features.
    seed : int
        Seed of random rotations.
    dead_threshold : float
        See :func:`wfviz.validation.dead_mask`.

    Returns
    -------
    WorkingBasis

    Examples
    --------
    >>> S = torch.diag(torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64))
    >>> b = working_basis(torch.ones(2, 3, dtype=torch.float64), S)
    >>> b.m, b.dead, b.to_original(b.W).tolist()
    (2, 1, [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    """
    dead = dead_mask(torch.diagonal(S), dead_threshold)
    if not bool(dead.any()):
        rot = get_rotation(rotation, S.shape[0], seed=seed, sigma=S)
        Wr, Sr = rot.apply_layer(W, S)
        return WorkingBasis(S.shape[0], None, rot, Wr, Sr)
    live = torch.nonzero(~dead).flatten()
    if not live.numel():
        raise WfvizError("Every feature of Σ has zero variance; there is nothing to quantize.")
    gone = torch.nonzero(dead).flatten()
    S_live = S.index_select(0, live).index_select(1, live)
    rot = get_rotation(rotation, live.numel(), seed=seed, sigma=S_live)
    Wr, Sr = rot.apply_layer(W.index_select(1, live.to(W.device)), S_live)
    cross = rot.apply_weight(S.index_select(0, gone).index_select(1, live))
    return WorkingBasis(S.shape[0], live, rot, Wr, Sr,
                        dead_W=W.index_select(1, gone.to(W.device)),
                        cross=cross.to(torch.float64),
                        S_dead=S.index_select(0, gone).index_select(1, gone))


TRIANGLE_BLOCK = 512
"""Columns per block of the triangular products of :func:`weighted_errors`."""


def weighted_errors(E: torch.Tensor, S: torch.Tensor, *,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(E S Eᵀ)_rr`` for every row ``r`` of ``E``, summed in float64.

    Only the upper triangle ``U`` of the symmetric ``S`` is used:
    ``eᵀ S e = 2 eᵀ U e − eᵀ diag(S) e``, and ``E U`` is formed a block of columns at a time
    from the rows of ``S`` above the block (about half the multiply-adds of ``E S``, in
    torch's own GEMMs). ``dtype`` is the precision of the products (float64 by default).

    Examples
    --------
    >>> S = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> weighted_errors(torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64), S).tolist()
    [7.0, 2.0]
    """
    E = E.to(dtype)
    S = S.to(E.device, dtype)
    n = E.shape[1]
    out = torch.zeros(E.shape[0], dtype=torch.float64, device=E.device)
    for j0 in range(0, n, TRIANGLE_BLOCK):
        j1 = min(j0 + TRIANGLE_BLOCK, n)
        block = E[:, j0:j1] @ S[j0:j1, j0:j1].triu()
        if j0:
            block.addmm_(E[:, :j0], S[:j0, j0:j1])
        out += (block * E[:, j0:j1]).sum(1, dtype=torch.float64)
    diag = torch.diagonal(S).to(torch.float64)
    return 2 * out - (E.to(torch.float64) ** 2) @ diag
