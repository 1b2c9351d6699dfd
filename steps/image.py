"""The container image of every step on a containerised orchestrator (the cluster stack, configs/zenml/stacks/)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from zenml.config import DockerSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_requirements(extras: tuple[str, ...] = ("cluster",)) -> list[str]:
    """The project's dependencies as pyproject.toml declares them, with those of ``extras``."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], *(need for extra in extras for need in project["optional-dependencies"][extra])]


# An image with the project's requirements (and its cluster extra: the stack's S3 and Kubernetes clients), the
# project installed from the copied sources. The pipelines set it for all their steps (splits, evaluation and
# reports import the library as the training does); the training's GPUs (one per step on a cluster, train.gpus
# or --gpus when more) are its ResourceSettings (pipelines.common.train_options).
PROJECT_IMAGE = DockerSettings(
    requirements=project_requirements(), local_project_install_command="pip install --no-deps -e ."
)
