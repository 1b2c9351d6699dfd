"""The project's ZenML set-up, found the way ZenML finds any project's: no startup hook, no exported variable.

* The repository is the project root, marked by the ``.zen`` folder that `zenml init` writes there
  (:func:`ensure_repository` runs it on a pipeline's first start). ZenML looks for it from the working
  directory upwards, so the `zenml` command run anywhere in the checkout sees the project's active stack.
* The global configuration and the local store are ZenML's defaults (``~/.config/zenml``), or wherever the
  documented variables put them: ``ZENML_CONFIG_PATH`` (configuration and local SQLite store),
  ``ZENML_REPOSITORY_PATH`` (the repository, when not found from the working directory). A plain
  ``pip install -e .`` venv therefore lists the pipeline's runs with `zenml pipeline runs list`.
* The project's stack (:data:`STACK`): the default local orchestrator and artifact store plus an MLflow
  experiment tracker and model registry on the project's MLflow store, activated when it is registered
  (and in a new repository); a stack the user activates later stays active.
* the source root, against which ZenML resolves step and pipeline code, is pinned to the project
  whatever the working directory (so a test can keep its store and repository in a temporary directory).
* analytics off, rich tracebacks off, ZenML's own logging at WARN: the training log stays readable. These
  are defaults for the pipeline processes only; a variable already set in the environment wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOT_VARIABLE = "ZENML_CUSTOM_SOURCE_ROOT"  # zenml.constants.ENV_ZENML_CUSTOM_SOURCE_ROOT
STACK = "unimatch"  # the project's stack: local orchestrator and artifact store, MLflow tracker and registry
TRACKER, REGISTRY = "unimatch-mlflow", "unimatch-mlflow-registry"


def environment_defaults() -> dict[str, str]:
    """Quiet, non-interactive ZenML for the pipeline processes (see the module docstring)."""
    return {
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_LOGGING_VERBOSITY": "WARN",
        "ZENML_ENABLE_RICH_TRACEBACK": "false",
        "ZENML_DISABLE_INTERACTIVE_INPUT": "true",
        "AUTO_OPEN_DASHBOARD": "false",
    }


def configure() -> None:
    """Set the environment defaults (no-op for variables the caller already set) and pin the source root,
    without importing zenml: the DVC stage commands in this package run without it."""
    for key, value in environment_defaults().items():
        os.environ.setdefault(key, value)
    os.environ[SOURCE_ROOT_VARIABLE] = str(PROJECT_ROOT)  # read by zenml.utils.source_utils on import
    source_utils = sys.modules.get("zenml.utils.source_utils")
    if source_utils is not None:  # zenml came first (e.g. a test imported a step): pin it there too
        source_utils.set_custom_source_root(str(PROJECT_ROOT))


def repository_root() -> Path:
    """``ZENML_REPOSITORY_PATH`` when set, else the project root."""
    return Path(os.environ.get("ZENML_REPOSITORY_PATH") or PROJECT_ROOT)


def ensure_repository() -> None:
    """`zenml init` at the repository root if it is not one yet, and the project's stack active there."""
    from zenml.client import Client

    root = repository_root()
    new_repository = not Client.is_repository_directory(root)
    if new_repository:
        Client.initialize(root)
    client = Client()  # the process's one client, which the pipeline run uses too
    client.activate_root(root)
    ensure_stack(client, activate=new_repository)


def ensure_stack(client: Any, activate: bool = False) -> None:
    """Register :data:`STACK` (once) on the MLflow store the library logs to and keep its tracker's URI current;
    activate it when it is new or ``activate`` (a new repository), never over a stack the user chose since."""
    from zenml.enums import StackComponentType as Kind

    from unimatch.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(None)
    try:
        tracker = client.get_stack_component(Kind.EXPERIMENT_TRACKER, TRACKER)
    except KeyError:
        client.create_stack_component(TRACKER, "mlflow", Kind.EXPERIMENT_TRACKER, {"tracking_uri": uri})
    else:
        if tracker.configuration.get("tracking_uri") != uri:  # MLFLOW_TRACKING_URI changed, or the project moved
            client.update_stack_component(TRACKER, Kind.EXPERIMENT_TRACKER, configuration={"tracking_uri": uri})
    if not client.list_stack_components(type=Kind.MODEL_REGISTRY, name=REGISTRY).items:
        client.create_stack_component(REGISTRY, "mlflow", Kind.MODEL_REGISTRY, {})
    if not client.list_stacks(name=STACK).items:
        default = client.get_stack("default").components
        components = {kind: default[kind][0].name for kind in (Kind.ORCHESTRATOR, Kind.ARTIFACT_STORE)}
        client.create_stack(STACK, {**components, Kind.EXPERIMENT_TRACKER: TRACKER, Kind.MODEL_REGISTRY: REGISTRY})
        activate = True
    if activate:
        client.activate_stack(STACK)
