"""What wfviz raises and warns, in one small hierarchy.

- :class:`WfvizError` (a ``ValueError``): bad input or an impossible request. The message is one
  sentence saying what is wrong and what to do; the CLI prints it as ``wfviz: error: …`` with
  exit code 2 and the app shows it with ``st.error``.
- :class:`ResourceError` (a ``RuntimeError``): the input was fine but the machine could not do
  the work: out of memory, or a queue time-out. Retrying elsewhere or later can succeed.
- :class:`Cancelled`: the caller's ``cancel()`` returned True; work that finished is kept by the
  caller (a sweep's finished points, a model run's finished layers).

All three derive from :class:`WfvizException`, so ``except WfvizException`` catches whatever
wfviz raises on purpose. Notices that do not stop the work (a GPU fell back to the CPU, a
Cholesky needed more damping) are issued as :class:`WfvizWarning` through :mod:`warnings`.
"""

from __future__ import annotations


class WfvizException(Exception):  # noqa: N818 (the base of the hierarchy, not an error itself)
    """Base of everything wfviz raises on purpose."""


class WfvizError(WfvizException, ValueError):
    """Bad input or an impossible request, described in one sentence.

    Examples
    --------
    >>> isinstance(WfvizError("Σ must be square."), ValueError)
    True
    """


class ResourceError(WfvizException, RuntimeError):
    """The machine could not do the work (out of memory, a queue time-out), in one sentence.

    Examples
    --------
    >>> isinstance(ResourceError("out of memory"), WfvizError)
    False
    """


class Cancelled(WfvizException):  # noqa: N818 (an outcome the caller asked for, not an error)
    """Raised inside a long loop when the caller's cancel flag is set."""


class WfvizWarning(UserWarning):
    """A notice that does not stop the work (fallbacks, escalated damping, estimator bias)."""


def notify(message: str, notice=None) -> None:
    """Issue ``message`` as a :class:`WfvizWarning` and pass it to ``notice`` when given.

    Library code calls this instead of calling an optional callback, so that a notebook or
    script sees every notice through :mod:`warnings` even without a callback.

    Examples
    --------
    >>> import warnings
    >>> got = []
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     notify("fell back to the CPU", got.append)
    >>> got, str(w[0].message)
    (['fell back to the CPU'], 'fell back to the CPU')
    """
    import warnings

    warnings.warn(message, WfvizWarning, stacklevel=3)
    if notice is not None:
        notice(message)


def all_finite(t) -> bool:
    """Whether a torch tensor has no NaN or infinity, without an n×n boolean temporary.

    The sum is finite exactly when every entry is, unless finite entries overflow it; only
    then is every entry checked.

    Examples
    --------
    >>> import torch
    >>> all_finite(torch.tensor([1.0, 2.0])), all_finite(torch.tensor([1.0, float("nan")]))
    (True, False)
    >>> all_finite(torch.tensor([1e308, 1e308], dtype=torch.float64))
    True
    """
    import torch

    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())
