"""The one error type that wfviz raises for bad input."""


class WfvizError(ValueError):
    """Bad input or an impossible request, described in one sentence.

    The message says what is wrong and what to do; the CLI prints it as
    ``wfviz: error: <message>`` with exit code 2 and the app shows it with ``st.error``.
    """
