"""The engine's schedule: the poly learning rate per step and per parameter group, ST++'s snapshots at T/3, 2T/3
and T, evaluation every ``eval_every`` epochs, best.pth chosen by the task's headline metric, the evaluation
redone after resuming a finished run, and the labeled loss chosen by the config."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from unimatch.config import load_config
from unimatch.data.embedded_change import generate_embedded_change
from unimatch.engine import Trainer
from unimatch.engine.checkpoint import load_checkpoint
from unimatch.engine.losses import OhemCrossEntropy
from unimatch.engine.inference import EvalResult


def scripted_evaluations(trainer: Trainer, *rounds: tuple[float, np.ndarray]) -> list[int]:
    """Replace the trainer's validation by the given (mIoU, confusion matrix) per evaluation, the same for the
    student and the EMA teacher; returns the list the iterations of the evaluations are appended to."""
    script, at = iter(rounds), []

    def evaluate_models():
        miou, confusion = next(script)
        at.append(trainer.iteration)
        return {name: EvalResult(miou, {}, confusion) for name in ("student", "ema")}

    trainer.evaluate_models = evaluate_models
    return at


def test_poly_learning_rate_at_every_step_and_the_decoder_multiplier(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path, "train.lr=1e-3", "train.lr_multiplier=10", "train.max_iters=4", "train.poly_power=0.9")
    trainer = Trainer(cfg, progress=False)
    used, step = [], trainer.optimizer.step
    trainer.optimizer.step = lambda: used.append([group["lr"] for group in trainer.optimizer.param_groups]) or step()
    trainer.fit()
    # lr (1 - i / 4)^0.9 at step i: 0.75^0.9 = exp(0.9 ln 0.75) = 0.77192, 0.5^0.9 = 0.53589, 0.25^0.9 = 0.28717
    encoder = [1e-3, 0.77192e-3, 0.53589e-3, 0.28717e-3]
    assert [lrs[0] for lrs in used] == pytest.approx(encoder, rel=1e-4)
    assert [lrs[1] for lrs in used] == pytest.approx([10 * lr for lr in encoder], rel=1e-4)  # the decoder group
    assert len(used[0]) == 2


def test_snapshots_at_thirds_evaluation_every_second_epoch_and_best_by_miou(tiny_config, tmp_path):
    # 12 unlabeled images in batches of 2: 6 iterations per epoch, 18 in 3 epochs.
    cfg = tiny_config(tmp_path, "train.epochs=3", "train.max_iters=null", "train.snapshots=3", "train.eval_every=2")
    trainer = Trainer(cfg, progress=False)
    confusion = np.zeros((cfg.dataset.nclass, cfg.dataset.nclass))
    evaluated = scripted_evaluations(trainer, (40.0, confusion), (30.0, confusion))
    result = trainer.fit()
    assert evaluated == [12, 18]  # epoch 2, then the last epoch whatever eval_every says
    assert [epoch for epoch, _ in result.history["val/miou_ema"]] == [2, 3]
    checkpoints = tmp_path / "checkpoints"
    assert [load_checkpoint(checkpoints / f"snapshot_{k}of3.pth")["iteration"] for k in (1, 2, 3)] == [6, 12, 18]
    best = load_checkpoint(checkpoints / "best.pth")
    assert best["iteration"] == 12 and result.metrics["best_miou_ema"] == 40.0


def test_change_detection_keeps_the_best_changed_class_iou_not_the_best_miou(tmp_path):
    data = generate_embedded_change(tmp_path / "data", n_train=12, n_val=2, size=(64, 64))
    cfg = load_config("configs/change_detection.yaml", [
        f"dataset.root={data}", "split.labeled=4", "train.batch_size=2", "dataset.crop_size=56", "train.num_workers=0",
        "train.epochs=2", "model.weights=null", f"output_dir={tmp_path / 'run'}", "tracking.enabled=false",
        "eval.pseudo_label_images=0", "model.encoder=tiny",
    ])  # fmt: skip
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        trainer = Trainer(cfg, progress=False)
    # (target, prediction) counts: epoch 1 IoU_c = 2 / (2 + 0 + 8) = 20 %, epoch 2 IoU_c = 8 / (8 + 10 + 2) = 40 %,
    # while the mIoU given goes the other way (60 then 50).
    evaluated = scripted_evaluations(trainer, (60.0, np.array([[90, 0], [8, 2]])), (50.0, np.array([[80, 10], [2, 8]])))
    result = trainer.fit()
    assert evaluated == [4, 8]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pth")["iteration"] == 8
    assert result.metrics["best_iou_changed_ema"] == pytest.approx(40.0) and result.metrics["best_miou_ema"] == 60.0


def test_resuming_a_finished_run_without_its_best_checkpoint_evaluates_again(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path)
    Trainer(cfg, progress=False).fit()
    (tmp_path / "checkpoints" / "best.pth").unlink()  # e.g. lost, or the run was stopped before its final evaluation
    resumed = Trainer(cfg, progress=False)
    evaluated = scripted_evaluations(resumed, (25.0, np.zeros((cfg.dataset.nclass, cfg.dataset.nclass))))
    result = resumed.fit()
    assert resumed.iteration == 2 and evaluated == [2]  # no step trained again, one evaluation
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pth")["iteration"] == 2
    assert result.history["val/miou_ema"][-1] == (1, 25.0)


def test_the_labeled_loss_is_the_one_the_config_selects(tiny_config, tmp_path):
    ohem = Trainer(tiny_config(tmp_path / "ohem", "train.labeled_loss=ohem", "train.ohem_threshold=0.6", "train.ohem_min_kept=10"), progress=False)
    loss = ohem.method.labeled_loss
    assert isinstance(loss, OhemCrossEntropy) and (loss.threshold, loss.min_kept) == (0.6, 10)
    plain = Trainer(tiny_config(tmp_path / "ce"), progress=False).method.labeled_loss
    assert isinstance(plain, nn.CrossEntropyLoss) and plain.ignore_index == 255
