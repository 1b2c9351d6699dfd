"""Which MLflow store the steps log to: the stack's MLflow experiment tracker, or the library's own.

With ZenML's MLflow experiment tracker in the active stack, steps that log run with
``experiment_tracker=<its name>``; ZenML then opens an MLflow run for the step and the library's
``tracker_from_config`` logs into that active run. Without one (the default local stack) the library
opens its own run in its own store (``tracking.uri``, ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
"""

from __future__ import annotations

from typing import Any

MLFLOW_FLAVOR = "mlflow"


def mlflow_tracker() -> Any | None:
    """The active stack's MLflow experiment tracker component, or None."""
    from zenml.client import Client

    tracker = Client().active_stack.experiment_tracker
    return tracker if tracker is not None and tracker.flavor == MLFLOW_FLAVOR else None


def tracker_step_options(experiment: str, tags: dict[str, str]) -> dict[str, Any]:
    """``with_options`` arguments for a step that logs to MLflow: none on a stack without an MLflow
    tracker; else the tracker, our experiment name, and a nested run per step (ZenML's default puts
    every step of a pipeline run into ONE MLflow run, which would merge the methods' runs)."""
    tracker = mlflow_tracker()
    if tracker is None:
        return {}
    settings = {"experiment_name": experiment, "nested": True, "tags": tags}
    return {"experiment_tracker": tracker.name, "settings": {"experiment_tracker": settings}}


def store_uri() -> str | None:
    """The tracking URI runs were logged to (None: the library's default resolution)."""
    tracker = mlflow_tracker()
    return tracker.get_tracking_uri() if tracker is not None else None


def with_run_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` plus the id of the ZenML pipeline run this step belongs to (``zenml_run_id``), so an MLflow run
    leads back to its pipeline run in the ZenML dashboard."""
    from zenml import get_step_context

    return {**tags, "zenml_run_id": str(get_step_context().pipeline_run.id)}
