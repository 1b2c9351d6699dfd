"""The training engine on a small generated dataset: every method, resume, checkpoints, CLI."""

import math

import pytest
import torch

from unimatch.cli import main as cli_main
from unimatch.config import load_config
from unimatch.data import DataError, generate_embedded
from unimatch.engine import Trainer, TrainingError
from unimatch.engine.checkpoint import load_checkpoint
from unimatch.jobs import train
from unimatch.models import CheckpointError
from unimatch.tracking import Tracker


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_embedded(tmp_path_factory.mktemp("data") / "embedded", seed=3, n_train=24, n_val=4, size=(112, 84))


def small_config(dataset, out, *overrides):
    return load_config(
        "configs/embedded.yaml",
        [
            f"dataset.root={dataset}", "dataset.crop_size=56", f"output_dir={out}", "split.labeled=8",
            "train.batch_size=2", "train.epochs=1", "train.max_iters=4", "train.num_workers=0",
            "train.log_every=1", "tracking.enabled=false", "pretrain.method=none", *overrides,
        ],
    )


class RecordingTracker(Tracker):
    def __init__(self, fail_at: int | None = None):
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.fail_at = fail_at

    def log_metrics(self, metrics, step=None):
        if self.fail_at is not None and step == self.fail_at:
            raise KeyboardInterrupt("simulated crash")
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, value))


@pytest.mark.parametrize("method", ["labeled_only", "fixmatch", "unimatch_v1", "unimatch_v2"])
def test_every_method_trains_with_finite_losses(dataset, tmp_path, method):
    tracker = RecordingTracker()
    result = train(small_config(dataset, tmp_path, f"method.name={method}"), tracker, progress=False)
    assert [step for step, _ in tracker.metrics["train/loss"]] == [1, 2, 3, 4]  # log_every=1
    assert result.metrics["best_miou_ema"] == max(value for _, value in result.history["val/miou_ema"])
    assert result.best_checkpoint.exists() and result.last_checkpoint.exists()
    assert (tmp_path / "figures" / "training_curves.png").exists()
    # The unlabeled images have ground truth on disk: the teacher's pseudo labels are scored each epoch.
    coverage = tracker.metrics["pseudo/foreground_coverage"]
    assert len(coverage) == 1 and result.history["pseudo/foreground_coverage"] == [(1, coverage[0][1])]
    if method != "labeled_only":
        assert "ema" in load_checkpoint(result.last_checkpoint)


def test_iterations_per_epoch_follow_the_unlabeled_set(dataset, tmp_path):
    trainer = Trainer(small_config(dataset, tmp_path, "train.max_iters=null"), progress=False)
    assert trainer.sizes["labeled"] == 8 and trainer.sizes["unlabeled"] == 16
    assert trainer.iters_per_epoch == 16 // 2
    baseline = Trainer(small_config(dataset, tmp_path / "lo", "method.name=labeled_only", "train.max_iters=null"), progress=False)
    assert baseline.iters_per_epoch == trainer.iters_per_epoch  # same number of steps as the semi-supervised run


def _weights(path):
    state = load_checkpoint(path)
    return state["model"], state["ema"], state["optimizer"]["state"]


def test_resume_continues_exactly_where_the_crash_happened(dataset, tmp_path):
    overrides = ("train.max_iters=6", "train.checkpoint_every=3", "train.deterministic=true")
    uninterrupted = train(small_config(dataset, tmp_path / "full", *overrides), RecordingTracker(), progress=False)

    crashed_dir = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(small_config(dataset, crashed_dir, *overrides), RecordingTracker(fail_at=5), progress=False)
    assert load_checkpoint(crashed_dir / "checkpoints" / "latest.pth")["iteration"] == 3

    resumed_trainer = Trainer(small_config(dataset, crashed_dir, *overrides), RecordingTracker(), progress=False)
    assert resumed_trainer.iteration == 3
    resumed = resumed_trainer.fit()

    for ours, theirs in zip(_weights(resumed.last_checkpoint), _weights(uninterrupted.last_checkpoint)):
        for key in ours:
            if isinstance(ours[key], dict):
                for name in ours[key]:
                    assert torch.equal(ours[key][name], theirs[key][name]), (key, name)
            else:
                assert torch.equal(ours[key], theirs[key]), key
    assert resumed.metrics["best_miou_ema"] == uninterrupted.metrics["best_miou_ema"]


def test_resume_refuses_a_checkpoint_of_another_experiment(dataset, tmp_path, capsys):
    train(small_config(dataset, tmp_path, "train.max_iters=2"), progress=False)
    with pytest.raises(TrainingError, match="method.name"):
        Trainer(small_config(dataset, tmp_path, "method.name=fixmatch"), progress=False)
    overrides = [f"dataset.root={dataset}", "dataset.crop_size=56", f"output_dir={tmp_path}", "split.labeled=8",
                 "train.batch_size=2", "train.num_workers=0", "tracking.enabled=false", "method.name=fixmatch"]
    assert cli_main(["train", "--no-progress", *overrides]) == 2  # one line naming the key, no traceback
    assert "method.name" in capsys.readouterr().err.split("error: ", 1)[1]


def test_corrupt_latest_checkpoint_without_a_previous_one_is_reported(dataset, tmp_path):
    """One save only (at the end), so no latest.prev.pth to fall back to: see test_reliability.py for that."""
    train(small_config(dataset, tmp_path, "train.max_iters=2"), progress=False)
    latest = tmp_path / "checkpoints" / "latest.pth"
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"no usable checkpoint to resume from: cannot read checkpoint \S+latest\.pth"):
        Trainer(small_config(dataset, tmp_path), progress=False)
    assert latest.exists()  # left in place for the user to inspect or move aside
    with pytest.raises(CheckpointError):
        load_checkpoint(latest)


def test_non_finite_loss_stops_with_the_iteration(dataset, tmp_path, monkeypatch):
    import unimatch.methods.unimatch_v2 as v2

    original = v2.UniMatchV2.step

    def exploding(self, *args):
        losses = original(self, *args)
        losses.loss = losses.loss * float("nan")
        return losses

    monkeypatch.setattr(v2.UniMatchV2, "step", exploding)
    with pytest.raises(TrainingError, match="non-finite loss .* iteration 0"):
        train(small_config(dataset, tmp_path), progress=False)


def test_cli_train_evaluate_predict(dataset, tmp_path, capsys):
    common = [f"dataset.root={dataset}", "dataset.crop_size=56", f"output_dir={tmp_path}/run", "split.labeled=8",
              "train.batch_size=2", "train.max_iters=2", "train.num_workers=0", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    assert cli_main(["train", "--no-progress", *common]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pth"
    assert cli_main(["evaluate", "--no-progress", "--checkpoint", str(checkpoint), *common]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert cli_main(["predict", "--no-progress", "--checkpoint", str(checkpoint), "--input", str(dataset / "images" / "val"), "--output", str(tmp_path / "pred"), *common]) == 0
    assert len(list((tmp_path / "pred" / "labels").glob("*.png"))) == 4
    assert len(list((tmp_path / "pred" / "overlays").glob("*.jpg"))) == 4


def test_cli_reports_bad_config_keys(capsys):
    assert cli_main(["train", "train.bogus=1"]) == 2
    assert "train.bogus" in capsys.readouterr().err
    assert cli_main(["train", "dataset.crop_size=100"]) == 2
    assert "dataset.crop_size: 100 is not a multiple of 14, the size divisor of encoder 'tiny'" in capsys.readouterr().err


def test_all_labels_need_an_extra_pool_for_semi_supervised_methods(dataset, tmp_path):
    everything = ["split.labeled=24", "train.max_iters=2"]
    baseline = train(small_config(dataset, tmp_path / "lo", "method.name=labeled_only", *everything), progress=False)
    assert baseline.metrics["best_miou_ema"] >= 0
    assert (tmp_path / "lo" / "splits" / "unlabeled.txt").read_text() == ""
    with pytest.raises(DataError, match="needs unlabeled images"):
        Trainer(small_config(dataset, tmp_path / "v2", "method.name=unimatch_v2", *everything), progress=False)
    pool = generate_embedded(tmp_path / "pool", seed=9, n_train=6, n_val=1, size=(112, 84))
    extra = [f"dataset.extra_unlabeled=['{pool / 'images' / 'train'}']"]
    trainer = Trainer(small_config(dataset, tmp_path / "v2", "method.name=unimatch_v2", *everything, *extra), progress=False)
    assert trainer.sizes == {"labeled": 24, "unlabeled": 6, "val": 4}


def test_cpu_sized_cnn_trains_with_its_own_defaults_and_reports_its_size(dataset, tmp_path):
    tracker = RecordingTracker()
    cfg = small_config(dataset, tmp_path, "model.encoder=resnet-tiny", "model.weights=null", "dataset.crop_size=64",
                       "train.lr=null", "train.lr_multiplier=null")  # fmt: skip
    assert (cfg.train.lr, cfg.train.lr_multiplier) == (1e-3, 1.0)  # the CNN's declared from-scratch rates
    result = train(cfg, tracker, progress=False)
    assert all(math.isfinite(v) for _, v in tracker.metrics["train/loss"])
    assert round(result.metrics["params_encoder_m"], 2) == 0.70 and round(result.metrics["params_decoder_m"], 2) == 0.35
    assert result.metrics["mean_step_seconds"] > 0 and len(tracker.metrics["train/step_seconds"]) == 4
