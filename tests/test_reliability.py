"""Reliability: a run killed with SIGKILL resumes exactly, corrupt checkpoints fall back to the previous
one, writes are atomic, non-finite losses stop (or are skipped) cleanly, bad inputs fail naming the culprit."""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from unimatch.config import load_config
from unimatch.data import DataError, generate_embedded, read_split
from unimatch.engine import Trainer, TrainingError
from unimatch.engine.checkpoint import load_checkpoint, previous_path
from unimatch.engine.data import prepare_splits
from unimatch.errors import ConfigError
from unimatch.jobs import train
from unimatch.models import CheckpointError
from unimatch.utils.atomic import atomic_write, write_text_atomic

PROJECT = Path(__file__).resolve().parents[1]
# One thread per process: on a busy CPU, idle OpenMP threads spin and make these tiny runs many times slower.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_embedded(tmp_path_factory.mktemp("data") / "embedded", seed=3, n_train=24, n_val=4, size=(112, 84))


COMMON = ("dataset.crop_size=56", "split.labeled=8", "train.batch_size=2", "train.num_workers=0",
          "train.deterministic=true", "train.checkpoint_every=1", "tracking.enabled=false", "pretrain.method=none")  # fmt: skip


def small_config(dataset, out, *overrides):
    return load_config("configs/embedded.yaml", [f"dataset.root={dataset}", f"output_dir={out}", *COMMON,
                                                 "train.epochs=1", "train.max_iters=4", *overrides])  # fmt: skip


def assert_same_training_state(ours: Path, theirs: Path) -> None:
    """Bit-identical weights, EMA, optimizer moments, iteration, best scores and validation history. The
    train/* averages logged at the first logging step after a resume cover only the iterations since the
    resume (the logging window is not checkpointed), so for those only the logged iterations must match."""
    a, b = load_checkpoint(ours), load_checkpoint(theirs)
    for entry in ("model", "ema"):
        assert a[entry].keys() == b[entry].keys()
        for key in a[entry]:
            assert torch.equal(a[entry][key], b[entry][key]), (entry, key)
    for index, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    assert (a["iteration"], a["best"], a["history"].keys()) == (b["iteration"], b["best"], b["history"].keys())
    for name, points in b["history"].items():
        if name.startswith("val/"):
            assert a["history"][name] == points, name
        else:
            assert [step for step, _ in a["history"][name]] == [step for step, _ in points], name


# ----------------------------------------------------------------- SIGKILL and resume
def _train_args(dataset: Path, out: Path, *tracking: str) -> list[str]:
    return ["train", "--no-progress", "--config", "configs/embedded.yaml", f"dataset.root={dataset}", f"output_dir={out}",
            *COMMON, "train.epochs=2", *tracking]  # fmt: skip


def _train(dataset: Path, out: Path, *tracking: str) -> list[str]:
    return [sys.executable, "-m", "unimatch.cli", *_train_args(dataset, out, *tracking)]


def test_sigkill_mid_run_then_rerun_resumes_and_matches_an_uninterrupted_run(dataset, tmp_path, start_paused_after_first_evaluation):
    run = dict(cwd=PROJECT, env=ONE_THREAD, text=True)
    reference = subprocess.Popen(_train(dataset, tmp_path / "reference"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, **run)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = ("tracking.enabled=true", f"tracking.uri={store}", "tracking.experiment=sigkill")
    latest = tmp_path / "killed" / "checkpoints" / "latest.pth"
    # Killed right after the checkpoint of the epoch 1 evaluation (iteration 8 of 16): by then the EMA teacher,
    # the Adam moments and the best score all differ from their initial values, so a resume that drops any shows.
    victim = start_paused_after_first_evaluation(_train_args(dataset, tmp_path / "killed", *tracked), tmp_path / "paused",
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **run)  # fmt: skip
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL

    resumed = subprocess.run(_train(dataset, tmp_path / "killed", *tracked), capture_output=True, timeout=300, **run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {latest} from iteration 8/16" in resumed.stderr, resumed.stderr

    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    assert "resuming" not in err
    assert resumed.stdout.splitlines()[-1].split(" | ")[0] == out.splitlines()[-1].split(" | ")[0]  # "best EMA mIoU x.xx"
    assert_same_training_state(latest, tmp_path / "reference" / "checkpoints" / "latest.pth")
    assert not list(latest.parent.glob(".*.tmp"))  # a save cut by the kill leaves nothing behind
    # One training, one MLflow run: the rerun reopened the killed run recorded in the checkpoint and finished it.
    client = MlflowClient(tracking_uri=store)
    (only,) = client.search_runs([client.get_experiment_by_name("sigkill").experiment_id])
    assert only.info.status == "FINISHED" and only.info.run_id == load_checkpoint(latest)["run_id"]
    # Both epochs' evaluations are in it; work redone after the resume logs again what it logged before
    # the kill (MLflow cannot delete metric points), and being bit-identical it logs the same value.
    points = {(m.step, m.value) for m in client.get_metric_history(only.info.run_id, "val/miou_ema")}
    assert sorted(step for step, _ in points) == [8, 16]


# ----------------------------------------------------------------- corrupt checkpoints
@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory):
    """A 4-iteration run saved at every iteration: latest.pth at 4, latest.prev.pth at 3."""
    out = tmp_path_factory.mktemp("finished")
    train(small_config(dataset, out), progress=False)
    return out


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to / "checkpoints" / "latest.pth"


def _truncate(latest: Path, best: Path) -> None:
    latest.write_bytes(latest.read_bytes()[:1000])


def _pickle_object(latest: Path, best: Path) -> None:
    torch.save({"model": {"x": object()}}, latest)  # refused by weights_only loading


def _weights_only(latest: Path, best: Path) -> None:
    shutil.copy(best, latest)  # loads, but has no optimizer, RNG or history to resume with


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(_truncate, "cannot read checkpoint"), (_pickle_object, "cannot read checkpoint"),
     (_weights_only, "cannot resume a run: no optimizer, history, rng entries")],  # fmt: skip
    ids=["truncated", "pickled-object", "weights-only"],
)
def test_unusable_latest_is_set_aside_and_the_previous_one_resumes(dataset, finished_run, tmp_path, caplog, damage, reason):
    latest = _copy_run(finished_run, tmp_path / "run")
    damage(latest, latest.parent / "best.pth")
    damaged = latest.read_bytes()
    stale = latest.parent / ".latest.pth.k1ll3d.tmp"  # what a save killed mid-write leaves
    stale.write_bytes(b"partial")

    with caplog.at_level(logging.WARNING):
        trainer = Trainer(small_config(dataset, tmp_path / "run"), progress=False)
    assert trainer.iteration == 3
    why, _, then = caplog.text.partition(f"; kept as {latest}.corrupt, resuming from {previous_path(latest)}")
    assert then and reason in why and str(latest) in why
    assert (latest.parent / "latest.pth.corrupt").read_bytes() == damaged
    assert not stale.exists()

    trainer.fit()
    assert_same_training_state(latest, finished_run / "checkpoints" / "latest.pth")


def test_missing_latest_resumes_from_the_previous_one(dataset, finished_run, tmp_path):
    """Killed between the two renames of a save: latest.pth -> latest.prev.pth, new file -> latest.pth."""
    latest = _copy_run(finished_run, tmp_path / "run")
    latest.unlink()
    assert Trainer(small_config(dataset, tmp_path / "run"), progress=False).iteration == 3


def test_no_usable_checkpoint_is_an_error_naming_both_files(dataset, finished_run, tmp_path):
    latest = _copy_run(finished_run, tmp_path / "run")
    for path in (latest, previous_path(latest)):
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="no usable checkpoint") as error:
        Trainer(small_config(dataset, tmp_path / "run"), progress=False)
    assert str(latest) in str(error.value) and str(previous_path(latest)) in str(error.value)
    assert latest.exists() and previous_path(latest).exists()  # left as they were for the user to decide
    assert not list(latest.parent.glob("*.corrupt"))


def test_checkpoint_of_another_experiment_names_both_values_and_is_kept(dataset, finished_run, tmp_path):
    latest = _copy_run(finished_run, tmp_path / "run")
    with pytest.raises(TrainingError, match=r"latest\.pth was written by a different experiment \(method\.name: "
                                            r"checkpoint 'unimatch_v2', now 'fixmatch'\)"):  # fmt: skip
        Trainer(small_config(dataset, tmp_path / "run", "method.name=fixmatch"), progress=False)
    assert latest.exists() and not list(latest.parent.glob("*.corrupt"))


# ----------------------------------------------------------------- atomic writes
def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_text_atomic(tmp_path / "report.md", "old\n")

    def crash(file):
        file.write(b"half of the new cont")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash, backup=tmp_path / "report.prev.md")  # kept only once the new file is whole
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_unchanged_text_is_not_rewritten(tmp_path):
    target = write_text_atomic(tmp_path / "labeled.txt", "a.png a_mask.png\n")
    os.utime(target, ns=(1, 1))
    write_text_atomic(target, "a.png a_mask.png\n")
    assert target.stat().st_mtime_ns == 1
    write_text_atomic(target, "b.png b_mask.png\n")
    assert target.stat().st_mtime_ns != 1 and target.read_text() == "b.png b_mask.png\n"


# ----------------------------------------------------------------- non-finite losses
def _nan_at(monkeypatch, *bad_calls: int) -> None:
    import unimatch.methods.unimatch_v2 as v2

    original, calls = v2.UniMatchV2.step, itertools.count()

    def step(self, *args):
        losses = original(self, *args)
        if next(calls) in bad_calls:
            losses.loss = losses.loss * float("nan")
        return losses

    monkeypatch.setattr(v2.UniMatchV2, "step", step)


def test_bad_steps_are_skipped_up_to_the_limit_then_training_stops(dataset, tmp_path, monkeypatch, caplog):
    _nan_at(monkeypatch, 1, 2)
    cfg = small_config(dataset, tmp_path, "train.max_bad_steps=1")
    with caplog.at_level(logging.WARNING), pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at iteration 2") as error:
        train(cfg, progress=False)
    assert f"the last good checkpoint {tmp_path / 'checkpoints' / 'latest.pth'} (iteration 2) is kept" in str(error.value)
    assert "skipping iteration 1: non-finite loss" in caplog.text
    latest = tmp_path / "checkpoints" / "latest.pth"
    kept, before = load_checkpoint(latest), load_checkpoint(previous_path(latest))
    assert (kept["iteration"], kept["bad_steps"], before["iteration"]) == (2, 1, 1)
    for key, value in kept["model"].items():  # the skipped step changed nothing, and nothing is NaN
        assert torch.isfinite(value).all() and torch.equal(value, before["model"][key]), key
    resumed = Trainer(cfg, progress=False)  # the count survives a restart
    assert (resumed.iteration, resumed.bad_steps) == (2, 1)


def test_one_skipped_step_does_not_stop_training(dataset, tmp_path, monkeypatch):
    _nan_at(monkeypatch, 1)
    result = train(small_config(dataset, tmp_path, "train.max_bad_steps=1"), progress=False)
    assert load_checkpoint(result.last_checkpoint)["iteration"] == 4


# ----------------------------------------------------------------- bad inputs
def test_zero_byte_training_image_fails_naming_it_and_writes_no_checkpoint(dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    cfg = small_config(root, tmp_path / "run", "split.labeled=1", "train.num_workers=1")  # every batch holds it
    (sample,) = read_split(prepare_splits(cfg).labeled, root)
    sample.image.write_bytes(b"")
    with pytest.raises(DataError, match=re.escape(str(sample.image)) + ": cannot read image"):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_unknown_encoder_names_the_key_and_the_override_it_came_from(dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"^command-line override 'model\.encoder=huge': model\.encoder: Value error, unknown encoder 'huge'; choose one of"):
        small_config(dataset, tmp_path, "model.encoder=huge")


def test_bad_value_in_a_file_names_the_file_not_an_override(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("inherit: " + str(PROJECT / "configs" / "embedded.yaml") + "\ntrain:\n  epochs: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(config, ["train.batch_size=0"])
    problems = str(error.value).split("; ")
    assert f"{config.resolve()}: train.epochs: Input should be greater than or equal to 1" in problems
    assert "command-line override 'train.batch_size=0': train.batch_size: Input should be greater than or equal to 1" in problems
