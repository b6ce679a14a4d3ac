"""Step search for several target rates on one measured rate curve.

Both entropy-coded methods (GPTQ-EC, WaterSIC) have one scalar knob, the step, and a measured
rate that falls monotonically (up to sampling noise) as ``u = log2 step`` grows, with slope
≈ −1 bit per doubling at high rate. For a fixed ``W`` and Σ every pass, whatever target it was
run for, adds a point of the *same* curve, so all targets are searched together: each one
interpolates between the closest evaluated points that bracket it, or extrapolates from the
closest point with the local slope, through a quadratic of the three nearest points where that
is safe (the curve bends at low rate). The methods evaluate one candidate per unfinished target
in a single stacked pass (rows are independent in the SIC), which amortizes the per-column loop.
"""

from __future__ import annotations


class RateCurveSearch:
    """Search ``u = log2 step`` so that ``rate(u)`` hits every target within ``tol``.

    Parameters
    ----------
    targets : sequence of float
        Target rates (bits per weight, measured as the method measures them).
    tol : float
        A target is done when some evaluated point is within ``tol`` bits of it.
    u0 : float
        The first guess for ``targets[0]``; the others start ``target − targets[0]`` bits
        away on the high-rate slope.
    starts : sequence of float, optional
        A first guess for every target instead (a model that knows the low-rate bend).

    Examples
    --------
    >>> s = RateCurveSearch([2.0, 4.0], 0.01, u0=0.0)
    >>> [s.candidate(i) for i in range(2)]
    [0.0, -2.0]
    >>> for u in (0.0, -2.0):
    ...     s.add(u, 2.0 - u, result=None)   # a curve rate(u) = 2 − u
    >>> s.done(0), s.done(1)
    (True, True)
    """

    def __init__(self, targets, tol: float, u0: float, *, starts=None):
        self.targets, self.tol, self.u0 = [float(t) for t in targets], tol, u0
        self.starts = None if starts is None else [float(u) for u in starts]
        self.points: list[tuple[float, float]] = []
        self.best: list = [None] * len(self.targets)  # (|error|, u, rate, result)

    def add(self, u: float, rate: float, result) -> None:
        """Record that the step ``2^u`` measured ``rate``; keep ``result`` if it is a best."""
        self.points.append((u, rate))
        for i, t in enumerate(self.targets):
            err = abs(rate - t)
            if self.best[i] is None or err < self.best[i][0]:
                self.best[i] = (err, u, rate, result)

    def done(self, i: int) -> bool:
        """Whether target ``i`` has a point within ``tol``."""
        return self.best[i] is not None and self.best[i][0] <= self.tol

    def pending(self) -> list[float]:
        """The new candidates of the unfinished targets, sorted (empty when nothing is left).

        A target whose candidate was evaluated already cannot get closer (the curve jumps
        over it, e.g. with very few rows) and keeps its best point.
        """
        seen = {u for u, _ in self.points}
        todo = {self.candidate(i) for i in range(len(self.targets)) if not self.done(i)}
        return sorted(todo - seen)

    def candidate(self, i: int) -> float:
        """The next ``u`` to try for target ``i``."""
        t = self.targets[i]
        if not self.points:
            return self.starts[i] if self.starts is not None else self.u0 + (self.targets[0] - t)
        above = [p for p in self.points if p[1] > t]  # step too small
        below = [p for p in self.points if p[1] <= t]
        if above and below:
            (u1, r1), (u2, r2) = max(above), min(below)
            curved = self._inverse_quadratic(t)
            if curved is not None and u1 < curved < u2:
                return curved
            return u1 + (r1 - t) * (u2 - u1) / (r1 - r2) if r1 != r2 else 0.5 * (u1 + u2)
        u, r = max(above) if above else min(below)
        step = (r - t) / self._slope(u)
        curved = self._inverse_quadratic(t)
        if curved is not None and 0.5 <= (curved - u) / step <= 2.0:
            return curved
        return u + step

    def _inverse_quadratic(self, t: float) -> float | None:
        """``u(t)`` from the quadratic through the three points of rate closest to ``t``.

        The curve bends at low rate, where a secant between points a bit apart misses the
        target by a few hundredths of a bit; the quadratic usually lands within the tolerance.
        """
        near = sorted(self.points, key=lambda p: abs(p[1] - t))[:3]
        rs = [r for _, r in near]
        if len(near) < 3 or len(set(rs)) < 3:
            return None
        u = 0.0
        for i, (ui, ri) in enumerate(near):
            w = 1.0
            for j, rj in enumerate(rs):
                if j != i:
                    w *= (t - rj) / (ri - rj)
            u += w * ui
        return u

    def _slope(self, u: float) -> float:
        """−d rate / d u near ``u`` from the two closest points, kept in [0.3, 1.5]."""
        near = sorted(self.points, key=lambda p: abs(p[0] - u))[:2]
        if len(near) < 2 or near[0][0] == near[1][0]:
            return 1.0
        slope = (near[0][1] - near[1][1]) / (near[1][0] - near[0][0])
        return min(max(slope, 0.3), 1.5)


def padded(candidates: list[float], width: int) -> list[float]:
    """``candidates`` with its last entry repeated up to ``width`` entries.

    Problems that share one batched loop must stack the same number of copies; the padding
    copies are run but not measured.

    Examples
    --------
    >>> padded([1.0, 2.0], 4)
    [1.0, 2.0, 2.0, 2.0]
    """
    return (candidates + candidates[-1:] * width)[:width]
