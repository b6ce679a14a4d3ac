"""Reverse waterfilling: the information-theoretic bit allocation for Gaussian sources.

Coding ``n`` independent Gaussians of variances ``v_i = σ² λ_i`` under mean squared error, the
optimal allocation puts a water level ``θ`` over the spectrum: coordinate ``i`` gets distortion
``D_i = min(θ, v_i)`` and rate ``R_i = max(0, ½ log2(v_i / θ))`` bits. Between two consecutive
sorted variances the set of coordinates above the water is fixed, so the mean distortion and the
mean rate are explicit functions of ``θ`` on each segment and ``θ`` is solved in closed form after
locating the segment with a binary search over the breakpoints (no iterative root finding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import WfvizError


@dataclass(frozen=True)
class WaterfillResult:
    """Outcome of :func:`reverse_waterfill` for one target or a vector of ``k`` targets.

    Attributes
    ----------
    theta : float or ndarray, shape (k,)
        Water level (same units as ``σ² λ``).
    rates : ndarray, shape (n,) or (k, n)
        Bits per coordinate ``R_i``, in the input order of the eigenvalues.
    distortions : ndarray, shape (n,) or (k, n)
        Distortion per coordinate ``D_i``, in the input order of the eigenvalues.
    rate : float or ndarray, shape (k,)
        Mean bits per coordinate, ``mean(R_i)``.
    distortion : float or ndarray, shape (k,)
        Mean distortion per coordinate, ``mean(D_i)``.
    """

    theta: float | np.ndarray
    rates: np.ndarray
    distortions: np.ndarray
    rate: float | np.ndarray
    distortion: float | np.ndarray


class _Spectrum:
    """Sorted variances with the prefix/suffix sums that make each segment explicit."""

    def __init__(self, eigenvalues, variance: float):
        lam = np.asarray(eigenvalues, dtype=np.float64)
        if lam.ndim != 1 or lam.size == 0:
            raise WfvizError("Eigenvalues must be a non-empty 1-D array; pass the spectrum of Σ_X.")
        if not np.all(np.isfinite(lam)) or np.any(lam < 0):
            raise WfvizError("Eigenvalues must be finite and >= 0; clip tiny negatives to 0 first.")
        variance = float(variance)
        if not (np.isfinite(variance) and variance > 0):
            raise WfvizError(f"The weight variance must be a positive number, got {variance}.")
        self.v_input = variance * lam
        self.v = np.sort(self.v_input)[::-1]
        self.n = self.v.size
        self.m = int(np.count_nonzero(self.v))  # coordinates that can ever carry bits
        # tail[k] = sum of v[k:], summed from the smallest so small tails keep full precision.
        self.tail = np.concatenate([np.cumsum(self.v[::-1])[::-1], [0.0]])
        if self.m:
            # Log offsets from the largest variance keep the prefix sums small and accurate.
            self.log_top = np.log2(self.v[0])
            self.logs = np.log2(self.v[: self.m]) - self.log_top
            self.prefix = np.concatenate([[0.0], np.cumsum(self.logs)])

    def theta_for_rate(self, rate: np.ndarray) -> np.ndarray:
        """Water level whose mean rate is ``rate`` (1-D array of targets)."""
        if np.any(rate < 0):
            raise WfvizError(f"Rates must be >= 0 bits, got {rate.min():g}.")
        if self.m == 0:
            return np.zeros_like(rate)
        k_all = np.arange(self.m)
        # Mean rate when θ sits exactly on the k-th largest positive variance.
        rate_at_break = (self.prefix[:-1] - k_all * self.logs) / (2 * self.n)
        k = np.searchsorted(rate_at_break, rate, side="right")
        # Anchored at the segment's upper breakpoint v[k-1] so that θ lands exactly on it at the
        # segment's end (rate 0 gives θ = max v exactly) and the exponent stays small.
        gap = self.prefix[k] - k * self.logs[k - 1] - 2 * self.n * rate
        theta = self.v[k - 1] * np.exp2(gap / k)
        if np.any(theta == 0):
            raise WfvizError(f"A rate of {rate.max():g} bits drives the water level below the "
                             "float64 range; ask for fewer bits.")
        return theta

    def theta_for_distortion(self, distortion: np.ndarray) -> np.ndarray:
        """Water level whose mean distortion is ``distortion`` (1-D array of targets)."""
        if self.m == 0:
            return np.zeros_like(distortion)
        k_all = np.arange(self.n + 1)
        v_ext = np.concatenate([self.v, [0.0]])
        # Mean distortion when θ = v[k]; decreasing in k, so search the reversed array.
        d_at_break = (k_all * v_ext + self.tail) / self.n
        j = np.searchsorted(d_at_break[::-1], distortion, side="left")
        k = np.clip(self.n - j + 1, 1, self.n)
        theta = (self.n * distortion - self.tail[k]) / k
        # A target equal to mean(v) up to the rounding of however the caller summed it is the
        # rate-0 point, not a rate of 1e-16 bits.
        return np.where(distortion >= d_at_break[0] * (1 - 1e-12), self.v[0], theta)

    def mean_distortion(self, theta: np.ndarray) -> np.ndarray:
        """Mean of ``min(θ, v_i)`` for each θ, from the segment sums (no n×k array)."""
        k = self.n - np.searchsorted(self.v[::-1], theta, side="right")  # count of v_i > θ
        return (k * theta + self.tail[k]) / self.n


def _targets(value, what: str) -> tuple[np.ndarray, bool]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim > 1:
        raise WfvizError(f"The {what} target must be a number or a 1-D array of numbers.")
    if not np.all(np.isfinite(arr)):
        raise WfvizError(f"The {what} target must be finite, got {value!r}.")
    return np.atleast_1d(arr), arr.ndim == 0


def reverse_waterfill(eigenvalues, *, rate=None, distortion=None, variance: float = 1.0):
    """Solve reverse waterfilling for a target mean rate or a target mean distortion.

    Parameters
    ----------
    eigenvalues : array_like, shape (n,)
        Eigenvalues ``λ_i >= 0`` of Σ_X, in any order.
    rate : float or array_like of shape (k,), optional
        Target mean rate in bits per coordinate (``>= 0``).
    distortion : float or array_like of shape (k,), optional
        Target mean distortion per coordinate (``> 0``). Targets at or above ``mean(σ² λ)`` give
        rate 0 with ``θ = max(σ² λ)`` and distortion ``mean(σ² λ)``.
    variance : float
        Weight variance ``σ²`` that scales every eigenvalue.

    Returns
    -------
    WaterfillResult
        Scalars and ``(n,)`` arrays for a scalar target, ``(k,)`` and ``(k, n)`` for ``k`` targets.

    Notes
    -----
    Exactly one of ``rate`` and ``distortion`` must be given. Zero eigenvalues never receive
    bits. An all-zero spectrum needs no bits: every target then gives ``θ = 0``, rates 0 and
    distortion 0 (the returned rate is 0 even if a positive rate was asked for).

    Examples
    --------
    >>> res = reverse_waterfill([4.0, 1.0], rate=0.5)
    >>> float(res.theta), res.rates.tolist()
    (1.0, [1.0, 0.0])
    >>> float(reverse_waterfill([4.0, 1.0], distortion=1.0).rate)
    0.5
    """
    if (rate is None) == (distortion is None):
        raise WfvizError("Give exactly one of rate= or distortion= to reverse_waterfill.")
    spec = _Spectrum(eigenvalues, variance)
    if rate is not None:
        targets, scalar = _targets(rate, "rate")
        theta = spec.theta_for_rate(targets)
    else:
        targets, scalar = _targets(distortion, "distortion")
        if np.any(targets <= 0) and spec.m:
            raise WfvizError(
                f"The distortion target must be > 0 (zero needs infinite rate), got {distortion!r}."
            )
        theta = spec.theta_for_distortion(targets)
    v = spec.v_input[None, :]
    th = theta[:, None]
    distortions = np.minimum(th, v)
    with np.errstate(divide="ignore", invalid="ignore"):  # θ = 0 only for an all-zero spectrum
        rates = np.where(v > th, 0.5 * np.log2(v / th), 0.0)
    result = WaterfillResult(
        theta=theta,
        rates=rates,
        distortions=distortions,
        rate=rates.mean(axis=1),
        distortion=distortions.mean(axis=1),
    )
    if scalar:
        result = WaterfillResult(
            theta=float(theta[0]),
            rates=rates[0],
            distortions=distortions[0],
            rate=float(result.rate[0]),
            distortion=float(result.distortion[0]),
        )
    return result


def distortion_rate_curve(eigenvalues, rates, variance: float = 1.0) -> np.ndarray:
    """Mean distortion ``D(R)`` of reverse waterfilling at many rates, with no ``k × n`` array.

    Parameters
    ----------
    eigenvalues : array_like, shape (n,)
        Eigenvalues ``λ_i >= 0`` of Σ_X.
    rates : float or array_like, shape (k,)
        Mean rates in bits per coordinate (``>= 0``).
    variance : float
        Weight variance ``σ²``.

    Returns
    -------
    ndarray, shape (k,) (0-d for a scalar rate)
        ``D(R)`` per coordinate; costs ``O(n log n + k log n)``.

    Examples
    --------
    >>> distortion_rate_curve([1.0, 1.0], [0.0, 1.0]).tolist()
    [1.0, 0.25]
    """
    spec = _Spectrum(eigenvalues, variance)
    targets, scalar = _targets(rates, "rate")
    d = spec.mean_distortion(spec.theta_for_rate(targets))
    return d.reshape(()) if scalar else d
