"""``wfviz app``: find the Streamlit app (a checkout, or the copy a wheel installs) and run it.

The app is ``app.py`` plus ``pages/`` and ``.streamlit/config.toml``, which the design keeps
at the top of the repository. A wheel does not install them as importable modules (no
top-level ``app`` or ``pages`` in site-packages); it installs them as data under
``<prefix>/share/wfviz/``, next to the shipped bundle, and this module finds them there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import WfvizError

SHARE = Path("share") / "wfviz"
"""Where a wheel installs the app and the shipped bundles, relative to an install prefix."""


def _candidates() -> list[Path]:
    package = Path(__file__).resolve().parent
    return [package.parent,                       # a checkout (editable install)
            Path(sys.prefix) / SHARE,             # pip install into an environment
            package.parent / SHARE]               # pip install --target DIR


def app_dir() -> Path:
    """The directory holding ``app.py`` and ``pages/``.

    Examples
    --------
    >>> (app_dir() / "app.py").is_file()
    True
    """
    for path in _candidates():
        if (path / "app.py").is_file() and (path / "pages").is_dir():
            return path
    raise WfvizError("The wfviz app files (app.py, pages/) were not found next to the package "
                     f"or under {sys.prefix}/{SHARE}; reinstall wfviz from its wheel or run "
                     "from a checkout.")


def data_dir() -> Path | None:
    """The shipped ``sample_covariances/`` of this installation, or None."""
    for path in _candidates():
        if (path / "sample_covariances").is_dir():
            return path / "sample_covariances"
    return None


def app_command(port: int = 8501, *, headless: bool = False) -> list[str]:
    """The ``streamlit run`` command line that ``wfviz app`` runs (in :func:`app_dir`).

    Examples
    --------
    >>> app_command(8600, headless=True)[-4:]
    ['--server.port', '8600', '--server.headless', 'true']
    """
    if not (isinstance(port, int) and 1 <= port <= 65535):
        raise WfvizError(f"The port must be an integer from 1 to 65535, got {port!r}.")
    return [sys.executable, "-m", "streamlit", "run", str(app_dir() / "app.py"),
            "--server.port", str(port), "--server.headless", "true" if headless else "false"]


def run_app(port: int = 8501, *, headless: bool = False) -> int:
    """Run the app in place of this process (``exec``), so that stopping ``wfviz app`` stops
    the server; returns only if the exec failed.

    The working directory becomes :func:`app_dir`, so that Streamlit reads the app's own
    ``.streamlit/config.toml``.
    """
    command = app_command(port, headless=headless)
    os.chdir(app_dir())
    os.execv(command[0], command)
    return 1  # pragma: no cover (execv does not return)
