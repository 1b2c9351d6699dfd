"""Two-node training simulated on one machine: two torchrun agents on 127.0.0.1 (c10d rendezvous, gloo,
one process each), each running the command `unimatch train --nnodes 2 --rdzv-endpoint ...` starts on
its node. One node is killed after the first checkpoint; rerunning the command on both nodes resumes from
that checkpoint (the project's resume, not torchrun's --max-restarts)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from itertools import chain
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from unimatch.cli import main as cli_main
from unimatch.config import load_config
from unimatch.data import generate_embedded
from unimatch.engine.checkpoint import load_checkpoint
from unimatch.engine.distributed import weights_checksum
from unimatch.engine.worker import read_result
from unimatch.jobs.launch import torchrun_command

PROJECT = Path(__file__).resolve().parents[1]
# Added to the rank-0 guard (conftest): with HANG_AFTER_CHECKPOINT set (one node's environment), that
# node's rank marks the file it names and waits, once the checkpoint of iteration 2 is written: the node is
# then killed there.
SITECUSTOMIZE = """
import os
if os.environ.get("HANG_AFTER_CHECKPOINT") and "RANK" in os.environ:
    import pathlib, time
    import unimatch.engine.trainer as trainer

    checkpoint = trainer.Trainer._checkpoint

    def checkpoint_then_hang(self, *args, **kwargs):
        checkpoint(self, *args, **kwargs)
        if self.iteration >= 2:
            pathlib.Path(os.environ["HANG_AFTER_CHECKPOINT"]).write_text(str(self.iteration))
            time.sleep(600)

    trainer.Trainer._checkpoint = checkpoint_then_hang
"""
ITERATIONS = 8  # 16 unlabeled images, 1 per rank and step, 1 epoch
TIMEOUT = 90  # seconds any one phase may take before the test fails


def _node_overrides(tmp_path: Path) -> list[str]:
    """The CLI test's run: 2 steps on the cluster fixture's data."""
    return [
        f"dataset.root={tmp_path / 'data'}", "dataset.crop_size=56", f"output_dir={tmp_path / 'run'}",
        "split.labeled=8", "train.batch_size=1", "train.epochs=1", "train.max_iters=2", "train.num_workers=0",
        "train.device=cpu", "eval.pseudo_label_images=0", "tracking.experiment=multinode",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.log_model=false", "pretrain.method=none",
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def cluster(tmp_path, rank_zero_guard):
    """``start(name, port, *overrides, **env)``: one node, a torchrun agent running its one rank as `unimatch train
    --nnodes 2 --rdzv-endpoint 127.0.0.1:PORT` starts it on each node (the same command line), global rank
    0 opening the MLflow run; every node still running at the end of the test is killed, whatever happened."""
    guard = rank_zero_guard(SITECUSTOMIZE)
    data = generate_embedded(tmp_path / "data", seed=3, n_train=24, n_val=4, size=(112, 84))
    started: list[subprocess.Popen] = []

    def start(name: str, port: int, *overrides: str, **env: str) -> subprocess.Popen:
        cfg = load_config(PROJECT / "configs" / "embedded.yaml", [
            f"dataset.root={data}", "dataset.crop_size=56", f"output_dir={tmp_path / 'run'}", "split.labeled=8",
            "train.batch_size=1", "train.epochs=1", "train.num_workers=0", "train.log_every=1",
            "train.checkpoint_every=2", "train.device=cpu", "train.nnodes=2", f"train.rdzv_endpoint=127.0.0.1:{port}",
            "train.rdzv_id=multinode-test", "eval.pseudo_label_images=0", "tracking.experiment=multinode",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.log_model=false", "pretrain.method=none",
            *overrides,
        ])  # fmt: skip
        config_file = tmp_path / f"{name}.yaml"
        config_file.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
        command = torchrun_command(
            cfg, config_file, tmp_path / f"{name}.json", None, None, progress=False, tags={"kind": "train"}
        )
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(guard), str(PROJECT)]), **env}
        log = open(tmp_path / f"{name}.log", "ab")
        process = subprocess.Popen(command, cwd=PROJECT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        process.log, process.result = tmp_path / f"{name}.log", tmp_path / f"{name}.json"
        started.append(process)
        return process

    yield start, tmp_path
    for process in started:
        _kill_node(process)


def _kill_node(process: subprocess.Popen) -> None:
    """Kill a node: the torchrun agent and its rank (which torchrun starts in a session of its own)."""
    try:
        tree = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait()


def _wait_for(path: Path, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        failed = [p.log.read_text()[-3000:] for p in processes if p.poll() is not None]
        assert not failed and time.monotonic() < deadline, f"no {path.name}: {failed}"
        time.sleep(0.2)


def test_two_nodes_train_identically_rank_0_writes_and_a_killed_node_resumes(cluster):
    start, tmp_path = cluster
    port = _free_port()
    hung = tmp_path / "hung"
    first, second = start("node0", port), start("node1", port, HANG_AFTER_CHECKPOINT=str(hung))
    _wait_for(hung, [first, second])
    _kill_node(second)  # the node dies: its agent and its rank
    assert first.wait(timeout=TIMEOUT) != 0  # the surviving node's rank loses its peer and stops
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pth")["iteration"] == 2

    # The same command on both nodes again: they meet, resume from iteration 2 and finish.
    port = _free_port()
    nodes = [start("node0-again", port), start("node1-again", port)]
    assert [node.wait(timeout=TIMEOUT) for node in nodes] == [0, 0], [n.log.read_text()[-3000:] for n in nodes]
    logs = [node.log.read_text() for node in nodes]
    both = "".join(logs)

    latest = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pth")
    assert latest["iteration"] == ITERATIONS
    assert both.count(f"from iteration 2/{ITERATIONS}") == 2  # each rank resumed from the same checkpoint
    # Rank 0 checked every rank's weights equal and logged their checksum: that of the saved weights.
    expected = f"{int(weights_checksum(chain(latest['model'].values(), latest['ema'].values()))) % 2**64:016x}"
    assert re.findall(r"weights checksum ([0-9a-f]{16}) on all 2 ranks", both) == [expected]
    results = [node.result for node in nodes if node.result.exists()]
    assert len(results) == 1 and sum("best EMA mIoU" in log for log in logs) == 1  # only rank 0's node has one
    assert read_result(results[0]).iterations == ITERATIONS

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("multinode").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one run, resumed, from rank 0 only
    steps = [metric.step for metric in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, ITERATIONS + 1))  # each step once: 1-2 before the kill, 3-8 after


def test_node_ranks_fix_which_node_holds_rank_0(cluster, tmp_path):
    """`unimatch train --node-rank R` (torchrun's static rendezvous): node 0 holds global rank 0, hence the
    result, the MLflow run and the figures, although node 1 starts first (a ZenML step's pod as node 0)."""
    start, _ = cluster
    port = _free_port()
    common = [sys.executable, "-m", "unimatch.cli", "train", "--no-progress", "--nnodes", "2"]
    common += ["--rdzv-endpoint", f"127.0.0.1:{port}", *_node_overrides(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "guard"), str(PROJECT)])}
    nodes = []
    for rank in (1, 0):
        log = open(tmp_path / f"cli-node{rank}.log", "wb")
        command = [*common, "--node-rank", str(rank)]
        nodes.append(subprocess.Popen(command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        assert [node.wait(timeout=2 * TIMEOUT) for node in nodes] == [0, 0]
    finally:
        for node in nodes:
            _kill_node(node)
    second, first = ((tmp_path / f"cli-node{rank}.log").read_text() for rank in (1, 0))
    assert "best EMA mIoU" in first and "best EMA mIoU" not in second, first[-3000:]
    assert "weights checksum" in first and "INFO" not in second
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("multinode").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["kind"] == "train"
    assert (tmp_path / "run" / "figures" / "training_curves.png").exists()  # node 0's launcher published


def test_several_nodes_without_a_rendezvous_endpoint_is_a_config_error(tmp_path, capsys):
    args = ["train", "--nnodes", "2", f"output_dir={tmp_path / 'run'}", "train.device=cpu", "tracking.enabled=false"]
    assert cli_main(args) == 2
    assert "train.rdzv_endpoint: train.nnodes=2 needs the HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
