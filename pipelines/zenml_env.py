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

The same defaults reach the ``zenml`` command (``zenml pipeline runs list``, ``zenml pipeline run ... -c``),
which does not import this package, through a startup hook that ``make venv`` installs into the virtual
environment (:func:`install_startup_hook`): nothing needs exporting, and artifacts stay in the project.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Installed into the virtual environment by `make venv`: Python runs a .pth file's import line at every
# start, so the `zenml` command itself (which never imports this package) gets the same defaults.
HOOK_FILE = "unimatch_zenml_project.pth"
SOURCE_ROOT_VARIABLE = "ZENML_CUSTOM_SOURCE_ROOT"  # zenml.constants.ENV_ZENML_CUSTOM_SOURCE_ROOT


def environment_defaults(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The ZenML environment of the project at ``root`` (see the module docstring)."""
    return {
        "ZENML_CONFIG_PATH": str(root / ".zen" / "global"),
        "ZENML_REPOSITORY_PATH": str(root),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_LOGGING_VERBOSITY": "WARN",
        "ZENML_ENABLE_RICH_TRACEBACK": "false",
        "ZENML_DISABLE_INTERACTIVE_INPUT": "true",
        "AUTO_OPEN_DASHBOARD": "false",
    }


def startup_hook(root: Path = PROJECT_ROOT) -> str:
    """The one-line .pth body that sets :func:`environment_defaults` (never overriding a set variable)."""
    settings = "; ".join(
        f"os.environ.setdefault({key!r}, {value!r})" for key, value in environment_defaults(root).items()
    )
    return f"import os; {settings}\n"


def install_startup_hook(site_dir: Path | None = None, root: Path = PROJECT_ROOT) -> Path:
    """Write the hook into ``site_dir`` (default: this interpreter's site-packages); returns its path."""
    target = Path(site_dir or sysconfig.get_paths()["purelib"]) / HOOK_FILE
    target.write_text(startup_hook(root), encoding="utf-8")
    print(f"ZenML defaults of {root} for every Python of {sys.prefix}: {target}")
    return target


def configure() -> None:
    """Set the ZenML environment defaults (no-op for variables the caller already set) and pin the source
    root, without importing zenml: the DVC stage commands in this package run without it."""
    for key, value in environment_defaults().items():
        os.environ.setdefault(key, value)
    os.environ[SOURCE_ROOT_VARIABLE] = str(PROJECT_ROOT)  # read by zenml.utils.source_utils on import
    source_utils = sys.modules.get("zenml.utils.source_utils")
    if source_utils is not None:  # zenml came first (e.g. a test imported a step): pin it there too
        source_utils.set_custom_source_root(str(PROJECT_ROOT))


def ensure_repository() -> None:
    """Mark the repository (``ZENML_REPOSITORY_PATH``) if it is not one yet."""
    from zenml.client import Client

    root = Path(os.environ.get("ZENML_REPOSITORY_PATH", PROJECT_ROOT))
    if not Client.is_repository_directory(root):
        Client.initialize(root)
