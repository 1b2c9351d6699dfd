"""The cluster stack (configs/zenml/stacks/kubernetes.yaml) registered in a temporary ZenML store, no cluster
needed; the training step's GPU on it and every pipeline's Docker image; a scheduled run configuration kept for ZenML on that
stack (the Kubernetes orchestrator schedules), dropped for the crontab line on the local one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
STACK_FILE = PROJECT / "configs" / "zenml" / "stacks" / "kubernetes.yaml"
# Run in a process of its own: ZenML's global configuration is a per-process singleton.
REGISTER = """
import importlib, json, pkgutil, sys
from pathlib import Path
import pipelines
from zenml.client import Client
from pipelines.cli import _without_schedule
from pipelines.stacks import read_stack, register_stack

from pipelines.common import train_options
from steps.train import train_model

client = Client()
run_config, scratch = sys.argv[1], sys.argv[2]
local = _without_schedule(run_config, ["sweep"], Path(scratch))
local_resources = "resources" in train_options("e", {}, 0).get("settings", {})
client.create_secret("mlflow_server", values={"username": "user", "password": "secret"})
stack = read_stack(sys.argv[3], ["orchestrator.kubernetes_context=test-cluster", "artifact_store.path=s3://test/zenml"])
register_stack(client, stack, activate=True)
register_stack(client, stack, activate=True)  # again: updated in place
active = client.active_stack
step = train_model.with_options(**train_options("e", {}, 0)).configuration.settings
modules = [importlib.import_module(f"pipelines.{m.name}") for m in pkgutil.iter_modules(pipelines.__path__)]
found = {name: obj for module in modules for name, obj in vars(module).items() if type(obj).__name__ == "Pipeline"}
print(json.dumps({
    "local_resources": local_resources,
    "gpus": step["resources"].gpu_count,
    "step_docker": "docker" in step,
    "pipeline_images": {name: p.configuration.settings["docker"].requirements for name, p in found.items()},
    "stack": active.name,
    "flavors": {str(kind.value): component.flavor for kind, component in active.components.items()},
    "context": active.orchestrator.config.kubernetes_context,
    "mounts": [m["mountPath"] for m in active.orchestrator.config.pod_settings.volume_mounts],
    "artifacts": active.artifact_store.path,
    "tracking_uri": active.experiment_tracker.config.tracking_uri,
    "schedulable": active.orchestrator.config.is_schedulable,
    "local_kept_schedule": local == run_config,
    "cluster_kept_schedule": _without_schedule(run_config, ["sweep"], Path(scratch)) == run_config,
    "stacks": sorted(s.name for s in client.list_stacks().items),
}))
"""


def test_cluster_stack_registers_in_a_temporary_store(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("ZENML_")}
    env.update(
        ZENML_CONFIG_PATH=str(tmp_path / "zenml"), ZENML_REPOSITORY_PATH=str(tmp_path), ZENML_ANALYTICS_OPT_IN="false",
        ZENML_LOGGING_VERBOSITY="ERROR", PYTHONPATH=str(PROJECT), HOME=str(tmp_path / "home"),
    )  # fmt: skip
    run_config = PROJECT / "configs" / "zenml" / "sweep_weight.yaml"
    command = [sys.executable, "-c", REGISTER, str(run_config), str(tmp_path), str(STACK_FILE)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["stack"] == "unimatch-kubernetes" and found["stacks"] == ["default", "unimatch-kubernetes"]
    assert found["flavors"] == {
        "orchestrator": "kubernetes", "artifact_store": "s3", "container_registry": "default",
        "image_builder": "local", "experiment_tracker": "mlflow", "model_registry": "mlflow",
    }  # fmt: skip
    assert found["context"] == "test-cluster" and found["artifacts"] == "s3://test/zenml"  # the overrides
    assert found["mounts"] == ["/mnt/unimatch"] and found["tracking_uri"] == "https://mlflow.example.com"
    # The scheduled sweep: dropped (crontab line) on the local orchestrator, kept as a ZenML schedule here.
    assert found["schedulable"] and found["cluster_kept_schedule"] and not found["local_kept_schedule"]
    assert "crontab line" in done.stdout
    # The training step on the cluster: one GPU, none on the local one. Every pipeline's steps (splits, evaluation
    # and reports import the library too) run in the image with the project's requirements.
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert found["gpus"] == 1 and not found["local_resources"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["cluster"]]
    assert len(found["pipeline_images"]) >= 10 and not found["step_docker"]  # the pipeline's image, not its own
    assert all(images == requirements for images in found["pipeline_images"].values()), found["pipeline_images"]


def test_a_stack_override_of_an_unknown_component_names_it():
    from pipelines.stacks import read_stack
    from unimatch.errors import ConfigError

    with pytest.raises(ConfigError, match="no component 'orchestrater'"):
        read_stack(STACK_FILE, ["orchestrater.kubernetes_context=x"])
