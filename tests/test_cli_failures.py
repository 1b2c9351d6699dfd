"""Every anticipated failure of the real ``unimatch`` command line (a subprocess, as a user runs it): one
line naming the file, key or value, exit code 2 (130 on Ctrl-C, 143 on SIGTERM), nothing partial left on
disk and no stray run in MLflow."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from unimatch.config import load_config
from unimatch.data import generate_embedded, read_split
from unimatch.engine.data import prepare_splits

PROJECT = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
EXPERIMENT = "cli-failures"
COMMON = ("dataset.crop_size=56", "split.labeled=8", "train.batch_size=2", "train.deterministic=true",
          "pretrain.method=none", "model.weights=null", "eval.pseudo_label_images=0",
          f"tracking.experiment={EXPERIMENT}")  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_embedded(tmp_path_factory.mktemp("data") / "embedded", seed=5, n_train=20, n_val=4, size=(112, 84))


@pytest.fixture
def data_copy(dataset: Path, tmp_path: Path) -> Path:
    """A private copy that a test may damage."""
    return Path(shutil.copytree(dataset, tmp_path / "data"))


def settings(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [f"dataset.root={root}", f"split.dir={tmp_path / 'splits'}", f"output_dir={tmp_path / 'run'}",
            f"tracking.uri={store(tmp_path)}", *COMMON, *extra]  # fmt: skip


def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def unimatch(*args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unimatch.cli", *args], cwd=PROJECT, env=ONE_THREAD, text=True,
                          capture_output=True, timeout=timeout, **popen)  # fmt: skip


def train_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--no-progress", "-c", "configs/embedded.yaml", *settings(root, tmp_path, *extra)]


def the_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one error line of a failed command (asserting there is exactly one and no traceback)."""
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def runs(tmp_path: Path) -> list:
    """The MLflow runs of the test's store (none when the store was never created)."""
    if not (tmp_path / "mlflow.db").exists():
        return []
    client = MlflowClient(tracking_uri=store(tmp_path))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def split_samples(root: Path, tmp_path: Path, role: str, *extra: str) -> list:
    cfg = load_config("configs/embedded.yaml", settings(root, tmp_path, *extra))
    return read_split(getattr(prepare_splits(cfg), role), root, require_masks=role != "unlabeled")


def truncate(path: Path) -> None:
    """Keep the header (so a header check passes) and cut the pixel data: only decoding finds it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ----------------------------------------------------------------- training inputs
def test_undecodable_image_in_a_dataloader_worker_is_one_line(data_copy, tmp_path):
    (sample,) = split_samples(data_copy, tmp_path, "labeled", "split.labeled=1")  # in every batch
    truncate(sample.image)
    result = unimatch(*train_args(data_copy, tmp_path, "split.labeled=1", "train.num_workers=2", "train.max_iters=2"))
    line = the_error(result)
    assert str(sample.image) in line and "cannot read image" in line and "worker" not in line
    assert not list((tmp_path / "run").rglob("*.pth"))
    (run,) = runs(tmp_path)
    assert run.info.status == "FAILED" and str(sample.image) in run.data.tags["unimatch.error"]


def test_every_bad_file_is_found_before_training_and_listed_by_check_data(data_copy, tmp_path):
    val = split_samples(data_copy, tmp_path, "val")
    labeled = split_samples(data_copy, tmp_path, "labeled")
    val[0].image.write_bytes(b"")  # unreadable
    Image.new("L", (10, 10)).save(labeled[1].mask)  # size mismatch
    line = the_error(unimatch(*train_args(data_copy, tmp_path, "train.num_workers=0")))
    assert "2 problem(s)" in line and str(val[0].image) in line and str(labeled[1].mask) in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # found before the first step, not after an epoch

    listed = unimatch("check-data", "--no-progress", "-c", "configs/embedded.yaml", *settings(data_copy, tmp_path))
    assert the_error(listed).startswith("error: 2 problem(s)")
    assert listed.stdout.count("\n") == 2 and "cannot read image" in listed.stdout and "size mismatch" in listed.stdout


def test_check_data_decode_finds_bad_labels_that_headers_cannot(data_copy, tmp_path):
    (sample, *_) = split_samples(data_copy, tmp_path, "labeled")
    mask = np.array(Image.open(sample.mask))
    mask[0, 0] = 77
    Image.fromarray(mask).save(sample.mask)
    args = ("check-data", "--no-progress", "-c", "configs/embedded.yaml", *settings(data_copy, tmp_path))
    assert unimatch(*args).returncode == 0
    line = the_error(unimatch(*args, "--decode"))
    assert "1 problem(s)" in line and f"{sample.mask}: label values 77" in line


def test_batch_larger_than_the_pool_names_the_key(dataset, tmp_path):
    line = the_error(unimatch(*train_args(dataset, tmp_path, "train.batch_size=64", "train.num_workers=0")))
    assert "train.batch_size: 64 is larger than the 12 unlabeled images" in line


def test_missing_cuda_device_names_the_key_and_opens_no_run(dataset, tmp_path):
    line = the_error(unimatch(*train_args(dataset, tmp_path, "train.device=cuda:7")))
    assert "train.device: 'cuda:7'" in line
    assert runs(tmp_path) == []


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9/", "sqlite:///{tmp}/no/such/folder/mlflow.db"], ids=["http", "sqlite"])
def test_unusable_tracking_store_is_one_line_and_creates_nothing(dataset, tmp_path, uri):
    uri = uri.format(tmp=tmp_path)
    line = the_error(unimatch(*train_args(dataset, tmp_path, f"tracking.uri={uri}")))
    assert uri.rstrip("/") in line
    assert not (tmp_path / "no").exists() and not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file_is_refused_and_left_alone(dataset, tmp_path):
    (tmp_path / "run").write_text("my notes\n")
    line = the_error(unimatch(*train_args(dataset, tmp_path)))
    assert f"output_dir: {tmp_path / 'run'} is a file, not a folder" in line
    assert (tmp_path / "run").read_text() == "my notes\n" and runs(tmp_path) == []


def test_diverging_loss_says_no_checkpoint_exists_yet(dataset, tmp_path):
    line = the_error(unimatch(*train_args(dataset, tmp_path, "train.lr=1e12", "train.num_workers=0", "train.checkpoint_every=50")))
    assert "non-finite loss" in line and "no checkpoint was written yet" in line and "is kept" not in line
    assert not (tmp_path / "run" / "checkpoints" / "latest.pth").exists()


# ----------------------------------------------------------------- evaluate and predict
@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    result = unimatch(*train_args(dataset, out, "train.num_workers=0", "train.max_iters=2", "tracking.enabled=false"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "run" / "checkpoints" / "best.pth"


def predict_args(dataset: Path, tmp_path: Path, checkpoint: Path, images: Path, *extra: str) -> list[str]:
    return ["predict", "--no-progress", "-c", "configs/embedded.yaml", "--checkpoint", str(checkpoint),
            "--input", str(images), "--output", str(tmp_path / "predictions"), *settings(dataset, tmp_path), *extra]  # fmt: skip


def image_folder(dataset: Path, tmp_path: Path, count: int = 3) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for index, source in enumerate(sorted((dataset / "images" / "val").iterdir())[:count]):
        shutil.copy(source, folder / f"{index}.jpg")
    return folder


def test_evaluate_with_a_missing_checkpoint_opens_no_run(dataset, tmp_path):
    missing = tmp_path / "nope.pth"
    line = the_error(unimatch("evaluate", "--no-progress", "-c", "configs/embedded.yaml", "--checkpoint", str(missing),
                              *settings(dataset, tmp_path)))  # fmt: skip
    assert str(missing) in line
    assert runs(tmp_path) == []


def test_predict_refuses_a_folder_with_an_unreadable_image_before_writing(dataset, tmp_path, checkpoint):
    images = image_folder(dataset, tmp_path)
    (images / "2.jpg").write_bytes(b"not an image")  # the third of three
    line = the_error(unimatch(*predict_args(dataset, tmp_path, checkpoint, images)))
    assert f"{images / '2.jpg'}: cannot read image" in line and "nothing was written" in line
    assert not (tmp_path / "predictions").exists()


def test_predict_skips_an_image_that_fails_to_decode_and_says_so(dataset, tmp_path, checkpoint):
    images = image_folder(dataset, tmp_path)
    truncate(images / "1.jpg")
    result = unimatch(*predict_args(dataset, tmp_path, checkpoint, images))
    line = the_error(result)
    assert "1 of 3 images could not be decoded and were skipped (1.jpg)" in line
    assert f"skipped: {images / '1.jpg'}" in result.stderr
    assert sorted(p.name for p in (tmp_path / "predictions" / "labels").iterdir()) == ["0.png", "2.png"]


def test_predict_limit_must_be_positive(dataset, tmp_path, checkpoint):
    result = unimatch(*predict_args(dataset, tmp_path, checkpoint, image_folder(dataset, tmp_path), "--limit", "-1"))
    assert result.returncode == 2 and "--limit: must be a positive number, got -1" in result.stderr
    assert not (tmp_path / "predictions").exists()


def test_predict_output_that_is_a_file_is_refused(dataset, tmp_path, checkpoint):
    (tmp_path / "predictions").write_text("keep me\n")
    line = the_error(unimatch(*predict_args(dataset, tmp_path, checkpoint, image_folder(dataset, tmp_path))))
    assert f"--output: {tmp_path / 'predictions'} is a file, not a folder" in line
    assert (tmp_path / "predictions").read_text() == "keep me\n"


def test_predict_above_the_token_budget_switches_to_sliding_windows(dataset, tmp_path, checkpoint):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)).save(images / "large.png")
    result = unimatch(*predict_args(dataset, tmp_path, checkpoint, images, "eval.max_tokens=200"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "420x300 px is above eval.max_tokens=200 in original mode; predicting it in sliding windows of 56 px" in result.stderr
    assert Image.open(tmp_path / "predictions" / "labels" / "large.png").size == (420, 300)


# ----------------------------------------------------------------- signals and MLflow
@pytest.mark.parametrize(("sent", "code", "says"), [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                    (signal.SIGINT, 130, "interrupted (Ctrl-C)")], ids=["sigterm", "ctrl-c"])  # fmt: skip
def test_signal_marks_the_run_killed_in_one_line_and_the_rerun_finishes_that_run(
    dataset, tmp_path, sent, code, says, start_paused_after_first_evaluation
):
    args = train_args(dataset, tmp_path, "train.num_workers=0", "train.epochs=3", "train.checkpoint_every=1")
    process = start_paused_after_first_evaluation(args, tmp_path / "paused", cwd=PROJECT, env=ONE_THREAD, text=True,
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith(says)
    (run,) = runs(tmp_path)
    assert run.info.status == "KILLED"

    resumed = unimatch(*train_args(dataset, tmp_path, "train.num_workers=0", "train.epochs=3", "train.checkpoint_every=1"))
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-3000:]
    (again,) = runs(tmp_path)  # the same run, reopened and finished
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert "best_miou_ema" in again.data.metrics
