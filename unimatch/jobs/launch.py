"""Starting this node's ranks of a run: ``torchrun --nproc_per_node N -m unimatch.engine.worker``.

Used by the training job when ``train.gpus > 1`` or ``train.nnodes > 1``. The processes get the resolved
config as a file, so they train exactly the caller's config; global rank 0 hands its result back as JSON.
One node: ``--standalone``. Several nodes: every node runs the same command, and torchrun's elastic
rendezvous (c10d backend at ``train.rdzv_endpoint``) assigns the ranks; the node that got global rank 0
is the one whose launch returns a result. With ``train.node_rank``, torchrun's static rendezvous gives each
node its fixed place instead (node 0: global rank 0), e.g. for a ZenML step's pod. After a node fails,
``train.max_restarts`` lets torchrun restart the ranks; beyond that, rerunning the command on every node
resumes from the last checkpoint.
"""

from __future__ import annotations

import json
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
    cfg: ExperimentConfig,
    config_file: Path,
    result_file: Path,
    run_id: str | None,
    encoder_weights: str | None,
    progress: bool,
    tags: dict[str, str] | None = None,
) -> list[str]:
    """The torchrun command of this node. ``tags``: several nodes, global rank 0 opens (or resumes) the run."""
    train = cfg.train
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={train.gpus}"]
    command += [f"--max-restarts={train.max_restarts}"]
    if train.nnodes > 1 and train.node_rank is not None:  # static: this node's ranks are fixed
        host, port = train.rdzv_endpoint.rsplit(":", 1)
        command += [f"--nnodes={train.nnodes}", f"--node-rank={train.node_rank}", f"--master-addr={host}"]
        command += [f"--master-port={port}"]
    elif train.nnodes > 1:
        command += [
            f"--nnodes={train.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={train.rdzv_endpoint}",
            f"--rdzv-id={train.rdzv_id}",
        ]
    else:
        command.append("--standalone")
    command += ["-m", "unimatch.engine.worker", "--config", str(config_file), "--result", str(result_file)]
    if run_id:
        command += ["--run-id", run_id]
    if tags is not None:
        command += ["--tags", json.dumps(tags)]
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


def _check_nodes(cfg: ExperimentConfig) -> None:
    train = cfg.train
    if train.nnodes > 1 and not train.rdzv_endpoint:
        raise ConfigError(
            f"train.rdzv_endpoint: train.nnodes={train.nnodes} needs the HOST:PORT where the nodes meet "
            "(one node's address, reachable from every node; --rdzv-endpoint)"
        )
    if train.nnodes > 1 and train.node_rank is not None and ":" not in train.rdzv_endpoint:
        raise ConfigError(f"train.rdzv_endpoint: {train.rdzv_endpoint!r} is not HOST:PORT")
    if train.node_rank is not None and train.node_rank >= train.nnodes:
        raise ConfigError(
            f"train.node_rank: {train.node_rank}, but train.nnodes={train.nnodes} (ranks 0 to nnodes - 1)"
        )


def launch_torchrun(
    cfg: ExperimentConfig,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    encoder_weights: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrainResult | None:
    """Train ``cfg`` in ``cfg.train.gpus`` processes on this node (gloo processes when train.device is
    cpu), with the other ``train.nnodes - 1`` nodes, and return global rank 0's result: None on a node
    without rank 0. ``run_id``: rank 0 logs into this MLflow run (at ``tracking_uri``); ``tags``: rank 0
    opens the run itself with these tags (several nodes: which node gets rank 0 is only known at the
    rendezvous). The ranks' output goes to this process's stdout and stderr."""
    _check_nodes(cfg)
    _check_gpus(cfg)
    with tempfile.TemporaryDirectory(prefix="unimatch-torchrun-") as scratch:
        config_file, result_file = Path(scratch) / "config.yaml", Path(scratch) / "result.json"
        config_file.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        env = {**os.environ, **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})}
        command = torchrun_command(cfg, config_file, result_file, run_id, encoder_weights, progress, tags)
        status = subprocess.run(command, env=env, check=False).returncode
        if status != 0:
            nodes = f" on each of {cfg.train.nnodes} nodes" if cfg.train.nnodes > 1 else ""
            raise TrainingError(
                f"torchrun with {cfg.train.gpus} processes{nodes} failed (exit status {status}); "
                "the ranks' errors are printed above; run the same command again to resume from the last checkpoint"
            )
        return read_result(result_file) if result_file.exists() else None
