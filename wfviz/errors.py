"""The one error type that wfviz raises for bad input."""


class WfvizError(ValueError):
    """Bad input or an impossible request, described in one sentence.

    The message says what is wrong and what to do; the CLI prints it as
    ``wfviz: error: <message>`` with exit code 2 and the app shows it with ``st.error``.
    """


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
