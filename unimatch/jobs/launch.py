"""Starting a multi-GPU run on this node: ``torchrun --standalone --nproc_per_node N -m unimatch.engine.worker``.

Used by the training job when ``train.gpus > 1``. The processes get the resolved config as a file, so they
train exactly the caller's config; rank 0 hands its result back as JSON. Runs across several nodes are
started by the cluster's launcher (torchrun on each node running ``unimatch train``), not from here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from ..config import ExperimentConfig
from ..engine import TrainingError, TrainResult, resolve_device
from ..engine.worker import read_result
from ..errors import ConfigError


def torchrun_command(
    config_file: Path,
    processes: int,
    result_file: Path,
    run_id: str | None,
    encoder_weights: str | None,
    progress: bool,
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "unimatch.engine.worker",
        "--config",
        str(config_file),
        "--result",
        str(result_file),
    ]
    if run_id:
        command += ["--run-id", run_id]
    if encoder_weights:
        command += ["--encoder-weights", encoder_weights]
    if not progress:
        command.append("--no-progress")
    return command


def _check_gpus(cfg: ExperimentConfig) -> None:
    gpus, device = cfg.train.gpus, resolve_device(cfg.train.device)
    if device.type == "cpu" and cfg.train.device != "cpu":
        raise ConfigError(
            f"train.gpus={gpus} but no CUDA device is visible; set train.device=cpu to start {gpus} CPU processes"
        )
    if device.type == "cuda" and gpus > torch.cuda.device_count():
        raise ConfigError(f"train.gpus={gpus} but this machine has {torch.cuda.device_count()} CUDA device(s)")


def launch_torchrun(
    cfg: ExperimentConfig,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    encoder_weights: str | None = None,
) -> TrainResult:
    """Train ``cfg`` in ``cfg.train.gpus`` processes on this node (gloo processes when train.device is
    cpu) and return rank 0's result. ``run_id``: rank 0 logs into this MLflow run (at ``tracking_uri``)
    instead of creating one. The ranks' output goes to this process's stdout and stderr."""
    _check_gpus(cfg)
    with tempfile.TemporaryDirectory(prefix="unimatch-torchrun-") as scratch:
        config_file, result_file = Path(scratch) / "config.yaml", Path(scratch) / "result.json"
        config_file.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        env = {**os.environ, **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})}
        command = torchrun_command(config_file, cfg.train.gpus, result_file, run_id, encoder_weights, progress)
        status = subprocess.run(command, env=env, check=False).returncode
        if status != 0:
            raise TrainingError(
                f"torchrun with {cfg.train.gpus} processes failed (exit status {status}); "
                "the ranks' errors are printed above"
            )
        return read_result(result_file)
