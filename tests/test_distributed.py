"""Multi-process training: two gloo ranks on CPU, started the way `unimatch train train.gpus=2` and the
ZenML step start them (torchrun running `unimatch.cli train`), on a tiny generated dataset."""

from __future__ import annotations

import os
import re
from itertools import chain
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from unimatch.config import load_config
from unimatch.data import generate_embedded
from unimatch.engine import Trainer, TrainingError
from unimatch.engine.checkpoint import load_checkpoint
from unimatch.engine.distributed import weights_checksum
from unimatch.engine.evaluate import evaluate_checkpoint
from unimatch.engine.stream import StreamPositions
from unimatch.errors import ConfigError
from unimatch.jobs import launch_torchrun
from unimatch.tracking import tracker_from_config

PROJECT = Path(__file__).resolve().parents[1]
# Added to the rank-0 guard (conftest): UNSYNCED_GRADIENTS=1 swaps DDP for the bare step module.
SITECUSTOMIZE = """
if os.environ.get("UNSYNCED_GRADIENTS") == "1":
    import unimatch.engine.distributed as distributed
    import unimatch.engine.trainer as trainer

    trainer.wrap_for_training = lambda model, method, ctx: distributed.TrainStep(model, method)
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_embedded(tmp_path_factory.mktemp("data") / "embedded", seed=3, n_train=24, n_val=4, size=(112, 84))


@pytest.fixture
def two_ranks(tmp_path, monkeypatch, rank_zero_guard):
    """Environment for a 2-process run; returns the config factory."""
    guard = rank_zero_guard(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(guard), str(PROJECT)]))
    monkeypatch.chdir(PROJECT)

    def config(dataset, *overrides):
        return load_config("configs/embedded.yaml", [
            f"dataset.root={dataset}", "dataset.crop_size=56", f"output_dir={tmp_path / 'run'}", "split.labeled=8",
            "train.batch_size=2", "train.epochs=1", "train.num_workers=0", "train.log_every=1", "train.device=cpu",
            "train.gpus=2", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.experiment=ddp", "pretrain.method=none", *overrides,
        ])

    return config


def _assert_ranks_hold_the_checkpointed_weights(err: str, latest: dict) -> None:
    """Rank 0 logs the checksum of the weights every rank holds (the run stops if they differ): equal only
    if every step's gradient and EMA updates were the same on both ranks, although they read different images."""
    checksums = re.findall(r"weights checksum ([0-9a-f]{16}) on all 2 ranks", err)
    expected = f"{int(weights_checksum(chain(latest['model'].values(), latest['ema'].values()))) % 2**64:016x}"
    assert checksums == [expected], err[-3000:]


def _assert_rank_0_alone_logs_info_and_no_stride_warning(err: str) -> None:
    """Issue 31: rank 1's INFO lines would repeat rank 0's; DDP warns about gradients whose strides differ
    from their bucket's when they are not its views."""
    assert err.count("INFO unimatch.engine.data: preflight") == 1, err[-3000:]
    assert err.count("iterations (4 per epoch) on cpu x 2") == 1
    assert "Grad strides do not match bucket view strides" not in err


def _assert_one_run_logged_by_rank_0(uri: str, run_id: str) -> None:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert [run.info.run_id for run in runs] == [run_id] and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["table"] == "ddp-test" and "best_miou_ema" in runs[0].data.metrics
    assert len(client.get_metric_history(run_id, "train/loss")) == 4  # once per step, not once per rank


def _single_process_miou(cfg, checkpoint: Path) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks (torchrun's OMP_NUM_THREADS=1): the same float rounding
    try:
        return evaluate_checkpoint(cfg, checkpoint, progress=False).miou
    finally:
        torch.set_num_threads(threads)


def test_gpus_without_cuda_is_an_error_naming_the_key(dataset, two_ranks, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.gpus=2 but no CUDA device"):
        launch_torchrun(two_ranks(dataset, "train.device=auto"))


def test_ranks_read_disjoint_shards_of_each_global_batch():
    shards = [list(StreamPositions(3, 5, batch=2, rank=rank, world=2)) for rank in (0, 1)]
    assert shards == [[12, 13, 16, 17], [14, 15, 18, 19]]  # global batch i = positions [4i, 4i + 4)


def test_two_ranks_stay_identical_only_rank_0_writes_and_resume_together(dataset, two_ranks, monkeypatch, capfd):
    cfg = two_ranks(dataset)
    with tracker_from_config(cfg, tags={"table": "ddp-test"}) as tracker:  # as the ZenML training step does
        result = launch_torchrun(cfg, run_id=tracker.run_id, progress=False)
    out, err = capfd.readouterr()

    latest = load_checkpoint(result.last_checkpoint)
    assert latest["iteration"] == 4  # 16 unlabeled images, 2 per rank and step
    assert any(latest["model"][key].ne(latest["ema"][key]).any() for key in latest["model"])  # it trained
    _assert_ranks_hold_the_checkpointed_weights(err, latest)
    _assert_rank_0_alone_logs_info_and_no_stride_warning(err)
    assert out.count("best EMA mIoU") == 1 and result.best_checkpoint.exists()
    _assert_one_run_logged_by_rank_0(cfg.tracking.uri, result.run_id)
    # Each rank evaluated half of the val images; their summed counts give the single-process mIoU.
    assert _single_process_miou(cfg, result.best_checkpoint) == result.metrics["best_miou_ema"]

    # Resumed by both ranks (checked equal at start), then one step without gradient synchronisation:
    # the ranks' weights part, and the check before the next checkpoint stops the run.
    monkeypatch.setenv("UNSYNCED_GRADIENTS", "1")
    with pytest.raises(TrainingError, match="torchrun with 2 processes failed"):
        launch_torchrun(two_ranks(dataset, "train.epochs=2", "train.max_iters=5", "tracking.enabled=false"), progress=False)
    err = capfd.readouterr().err
    assert err.count("from iteration 4/5") == 2, err[-3000:]
    assert "the ranks' weights differ at iteration 5" in err


def test_accumulation_under_ddp_equals_one_process_accumulating_the_same_micro_batches(dataset, two_ranks, tmp_path):
    """2 ranks x 2 micro-batches of 1 step against 1 process x 4 micro-batches: the same 4 micro-batches
    (rank r reads global positions [2r, 2r + 2) of the step), hence the same update (labeled-only, SGD)."""
    recipe = ("method.name=labeled_only", "method.schedule=unlabeled", "train.optimizer=sgd", "train.lr=0.05",
              "train.max_iters=2", "tracking.enabled=false", "train.batch_size=1")  # fmt: skip
    ddp = launch_torchrun(two_ranks(dataset, *recipe, "train.accumulate=2"), progress=False)
    single = two_ranks(dataset, *recipe, "train.accumulate=4", "train.gpus=1", f"output_dir={tmp_path / 'single'}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = Trainer(single, progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    got, expected = (load_checkpoint(result.last_checkpoint)["model"] for result in (ddp, alone))
    # DPT never uses its coarsest fusion block's first residual unit: under DDP its gradient is zero, not
    # none, and weight decay shrinks it (distributed.wrap_for_training).
    used = [key for key in expected if "refinenet4.resConfUnit1" not in key]
    assert max(float((got[key] - expected[key]).abs().max()) for key in used) <= 1e-6
