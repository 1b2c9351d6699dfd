"""A project-local ZenML set-up that needs no manual `zenml init` and no server.

ZenML reads its environment when it is first imported, so :func:`configure` runs from
``pipelines/__init__.py``, before any pipeline module imports zenml. Every value is a default: a
variable already set in the environment (a test's temporary directory, a team's remote store) wins.

* ``ZENML_CONFIG_PATH=<project>/.zen/global``: the global configuration, the SQLite store and the
  local artifact store live inside the checkout (``.zen/`` is git-ignored) instead of
  ``~/.config/zenml``; ZenML creates them on first use (it needs the ``zenml[local]`` extra for the
  SQLite store, never a server daemon).
* ``ZENML_REPOSITORY_PATH=<project>``: the ZenML repository (it keeps the repository's active
  stack); :func:`ensure_repository` creates the ``.zen`` folder that marks it, as `zenml init` does.
* the source root, against which ZenML resolves step and pipeline code, is pinned to the project
  whatever the working directory or repository (so a test can keep both in a temporary directory,
  and `zenml pipeline run` works from anywhere).
* analytics off, rich tracebacks off, ZenML's own logging at WARN: the training log stays readable.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = {
    "ZENML_CONFIG_PATH": str(PROJECT_ROOT / ".zen" / "global"),
    "ZENML_REPOSITORY_PATH": str(PROJECT_ROOT),
    "ZENML_ANALYTICS_OPT_IN": "false",
    "ZENML_LOGGING_VERBOSITY": "WARN",
    "ZENML_ENABLE_RICH_TRACEBACK": "false",
    "ZENML_DISABLE_INTERACTIVE_INPUT": "true",
    "AUTO_OPEN_DASHBOARD": "false",
}


def configure() -> None:
    """Set the ZenML environment defaults (no-op for variables the caller already set), then pin the
    source root; zenml is imported only after the variables are set."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    from zenml.utils import source_utils

    source_utils.set_custom_source_root(str(PROJECT_ROOT))


def ensure_repository() -> None:
    """Mark the repository (``ZENML_REPOSITORY_PATH``) if it is not one yet."""
    from zenml.client import Client

    root = Path(os.environ.get("ZENML_REPOSITORY_PATH", PROJECT_ROOT))
    if not Client.is_repository_directory(root):
        Client.initialize(root)
