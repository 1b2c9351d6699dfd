"""Gradient accumulation (train.accumulate=K): K micro-batches per optimizer step against one large batch.

Labeled-only's update equals the large batch's. UniMatch V2's differs where a micro-batch is not the
large batch (README "Fit your hardware"): CutMix partners are paired inside each micro-batch, and the
losses are normalised per micro-batch. Once those coincide (each micro-batch holds the same images,
so that sample i's partner is the same image either way; the same padding in each; dropout kept off
through undropped_fraction=1 since the masks are drawn per micro-batch) the updates are equal, and
with distinct images they are not.
"""

from __future__ import annotations

import pytest
import torch

from unimatch.engine import Trainer
from unimatch.engine.checkpoint import load_checkpoint
from unimatch.methods import LabeledBatch, UnlabeledBatch
from unimatch.tracking import Tracker

CROP = 42
TOLERANCE = 1e-6
# SGD, whose update is proportional to the gradient (AdamW's first step is its sign: blind to a scale error).


def _trainer(tiny_config, out, batch: int, accumulate: int, *overrides: str) -> Trainer:
    cfg = tiny_config(
        out, f"train.batch_size={batch}", f"train.accumulate={accumulate}", "train.resume=false", "train.amp=fp32",
        "train.device=cpu", "train.optimizer=sgd", "train.lr=0.05", *overrides,
    )  # fmt: skip
    return Trainer(cfg, progress=False)


def _images(generator: torch.Generator, count: int) -> torch.Tensor:
    return torch.randn(count, 3, CROP, CROP, generator=generator)


def _labeled(generator: torch.Generator, count: int) -> LabeledBatch:
    return LabeledBatch(_images(generator, count), torch.randint(0, 7, (count, CROP, CROP), generator=generator))


def _unlabeled(generator: torch.Generator, count: int, repeat: int) -> UnlabeledBatch:
    """``count`` samples made of ``count // repeat`` distinct images repeated ``repeat`` times; every sample
    its own CutMix box; padding in the same place of every sample."""
    views = [_images(generator, count // repeat).repeat(repeat, 1, 1, 1) for _ in range(3)]
    ignore = torch.zeros(count, CROP, CROP, dtype=torch.int64)
    ignore[:, -5:] = 255
    boxes = []
    for _ in range(2):
        box = torch.zeros(count, CROP, CROP, dtype=torch.int64)
        for sample in range(count):
            top, left = torch.randint(0, CROP - 12, (2,), generator=generator).tolist()
            box[sample, top : top + 12, left : left + 12] = 1
        boxes.append(box)
    return UnlabeledBatch(*views, ignore, *boxes)


def _update(trainer: Trainer, start: dict, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None) -> dict:
    """The parameters after one optimizer step from ``start`` on the given batch, minus ``start``."""
    trainer.model.load_state_dict(start)
    if trainer.ema is not None:
        trainer.ema.load_state_dict(start)
    losses, _ = trainer.train_step(labeled, unlabeled)
    assert losses is not None
    return {name: value.detach() - start[name] for name, value in trainer.model.named_parameters()}


def _max_difference(first: dict, second: dict) -> float:
    return max(float((first[name] - second[name]).abs().max()) for name in first)


def test_labeled_only_update_equals_the_large_batch_update(tiny_config, tmp_path):
    large = _trainer(tiny_config, tmp_path / "large", 4, 1, "method.name=labeled_only")
    accumulated = _trainer(tiny_config, tmp_path / "accumulated", 1, 4, "method.name=labeled_only")
    assert large.iters_per_epoch == accumulated.iters_per_epoch  # the same samples per optimizer step
    start = {name: value.clone() for name, value in large.model.state_dict().items()}
    labeled = _labeled(torch.Generator().manual_seed(0), 8)  # labeled-only: 2 x batch labeled images
    expected = _update(large, start, labeled, None)
    got = _update(accumulated, start, labeled, None)
    assert max(float(delta.abs().max()) for delta in expected.values()) > 1e-4  # a real update
    assert _max_difference(got, expected) <= TOLERANCE


@pytest.fixture
def unimatch_v2_pair(tiny_config, tmp_path):
    """UniMatch V2 at 4 images per step: one batch of 4, and 2 micro-batches of 2; tau = 0, so every
    pixel counts in the unlabeled loss; no channel dropout draws."""
    options = ("method.name=unimatch_v2", "method.threshold=0", "model.undropped_fraction=1.0")
    large = _trainer(tiny_config, tmp_path / "large", 4, 1, *options)
    accumulated = _trainer(tiny_config, tmp_path / "accumulated", 2, 2, *options)
    start = {name: value.clone() for name, value in large.model.state_dict().items()}
    return large, accumulated, start


def test_unimatch_v2_differs_only_by_the_micro_batch_cutmix_partners(unimatch_v2_pair):
    large, accumulated, start = unimatch_v2_pair
    generator = torch.Generator().manual_seed(1)
    labeled = _labeled(generator, 4)
    # Images (a, b, a, b): sample i's partner, B-1-i, is the same image in the batch of 4 and in its micro-batch.
    same_partners = _unlabeled(generator, 4, repeat=2)
    expected = _update(large, start, labeled, same_partners)
    assert _max_difference(_update(accumulated, start, labeled, same_partners), expected) <= TOLERANCE

    # Images (a, b, c, d): sample 0 takes its box from d in the large batch, from b in its micro-batch.
    distinct = _unlabeled(generator, 4, repeat=1)
    expected = _update(large, start, labeled, distinct)
    assert _max_difference(_update(accumulated, start, labeled, distinct), expected) > 1e-4


class _Steps(Tracker):
    """The steps at which the trainer logged its training loss."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def log_metrics(self, metrics, step=None):
        if "train/loss" in metrics:
            self.steps.append(step)


def test_schedule_logging_and_checkpoints_count_optimizer_steps(tiny_config, tmp_path):
    """K=2 micro-batches of 1 make the same optimizer steps as batches of 2: as many iterations per epoch
    (12 unlabeled images / 2), a loss logged at each, the learning rate decayed over them, latest.pth at the last."""
    cfg = tiny_config(
        tmp_path, "train.batch_size=1", "train.accumulate=2", "train.max_iters=null", "train.log_every=1",
        "train.device=cpu", "eval.pseudo_label_images=0",
    )  # fmt: skip
    tracker = _Steps()
    trainer = Trainer(cfg, tracker, progress=False)
    assert (trainer.iters_per_epoch, trainer.total_iters) == (6, 6)
    result = trainer.fit()
    assert tracker.steps == [1, 2, 3, 4, 5, 6] and result.iterations == 6
    assert load_checkpoint(result.last_checkpoint)["iteration"] == 6
    learning_rates = [value for _, value in result.history["train/lr"]]
    assert learning_rates == sorted(learning_rates, reverse=True) and len(set(learning_rates)) == 6
