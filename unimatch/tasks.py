"""Tasks: what a dataset's samples are and how the engine reads, augments, checks and scores them.

``segmentation``: one image -> a class mask (Pascal, Cityscapes, ADE20K, COCO, folders, the embedded data).
``classification``: one image -> one class (CIFAR-10, SVHN, STL-10, ImageNet-style folders, the embedded
classification data; SPEC §9). Its label is a 1 x 1 mask and its classifier's logits (B, nclass, 1, 1), so
methods, EMA and evaluation run unchanged; its data are read by ``unimatch.data.classification``.
``change_detection``: a bi-temporal pair (A, B) -> a binary change mask (LEVIR-CD, WHU-CD, the embedded
change data; SPEC §10). A pair travels through the engine as one 6-channel input, so methods, CutMix,
channel dropout and evaluation work unchanged; the siamese segmentor splits it.

A dataset layout declares its task (:func:`unimatch.data.layouts.layout_task`); the engine asks the task,
never the dataset name. ``headline`` is the metric that picks the best epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from .data import (
    DataCheck,
    EvalDataset,
    LabeledDataset,
    Sample,
    UnlabeledDataset,
    change,
    check_samples,
    check_training_data,
    class_names,
)
from .data.layouts import SplitFormat, layout_task
from .metrics import iou_per_class
from .models import build_segmentor
from .models.classifier import build_classifier
from .settings import ModelSettings


class SegmentationTask:
    name = "segmentation"
    input_images = 1  # images per sample; the model's input has 3 x this many channels
    headline = "miou"
    eval_batch_size = 1  # images per evaluation batch: whole images of any size, one at a time
    background_class: int | None = 0  # what the pseudo-label metrics' object/foreground shares leave out

    splits = SplitFormat(pairs=False)

    def read_split(
        self, path: str | Path, root: str | Path, require_masks: bool = True, allow_empty: bool = False
    ) -> list[Sample]:
        return self.splits.read(path, root, require_masks, allow_empty)

    def class_names(self, dataset: str, root: str | Path, nclass: int) -> list[str]:
        return class_names(dataset, root, nclass)

    def build_network(self, model: ModelSettings, nclass: int, input_size: int) -> nn.Module:
        """The task's network of the ``model`` section with random weights."""
        return build_segmentor(
            model.encoder,
            nclass,
            use_bn=model.use_bn,
            undropped_fraction=model.undropped_fraction,
            drop_position=model.drop_position,
            input_size=input_size,
            decoder=model.decoder,
            decoder_settings=model.decoder_settings,
            input_images=self.input_images,
        )

    def labeled_dataset(self, samples: Sequence[Sample], nclass: int, crop: int) -> Dataset:
        return LabeledDataset(samples, nclass, crop)

    def unlabeled_dataset(self, samples: Sequence[Sample], crop: int) -> Dataset:
        return UnlabeledDataset(samples, crop)

    def eval_dataset(self, samples: Sequence[Sample], nclass: int) -> Dataset:
        return EvalDataset(samples, nclass)

    def check(
        self,
        samples: Sequence[Sample],
        nclass: int,
        with_masks: bool,
        level: str,
        progress: bool = False,
        desc: str = "check",
    ) -> DataCheck:
        return check_samples(samples, nclass, with_masks, level, progress, desc)

    def scores(self, confusion: np.ndarray) -> dict[str, float]:
        """Metrics beyond mIoU (percent) from a dataset-wide confusion matrix; the headline among them."""
        return {}

    def check_training_data(
        self,
        labeled: Sequence[Sample],
        unlabeled: Sequence[Sample],
        val: Sequence[Sample],
        nclass: int,
        level: str = "headers",
        progress: bool = False,
    ) -> DataCheck:
        """Preflight of a training's three splits (unlabeled masks, if listed, are never read)."""
        return check_training_data(labeled, unlabeled, val, nclass, level, progress, check=self.check)


class ChangeDetectionTask(SegmentationTask):
    name = "change_detection"
    input_images = 2
    headline = "iou_changed"

    splits = SplitFormat(pairs=True)

    def class_names(self, dataset: str, root: str | Path, nclass: int) -> list[str]:
        return list(change.CLASSES)

    def labeled_dataset(self, samples: Sequence[Sample], nclass: int, crop: int) -> Dataset:
        return change.ChangeLabeledDataset(samples, crop)

    def unlabeled_dataset(self, samples: Sequence[Sample], crop: int) -> Dataset:
        return change.ChangeUnlabeledDataset(samples, crop)

    def eval_dataset(self, samples: Sequence[Sample], nclass: int) -> Dataset:
        return change.ChangeEvalDataset(samples)

    def check(
        self,
        samples: Sequence[Sample],
        nclass: int,
        with_masks: bool,
        level: str,
        progress: bool = False,
        desc: str = "check",
    ) -> DataCheck:
        return change.check_pairs(samples, nclass, with_masks, level, progress, desc)

    def scores(self, confusion: np.ndarray) -> dict[str, float]:
        """Table 14's metrics (SPEC §10): IoU of the changed class and overall accuracy over all pixels, plus
        the changed class's F1 (the other number LEVIR-CD papers report)."""
        return change_scores(confusion)


def change_scores(confusion: np.ndarray) -> dict[str, float]:
    """``iou_changed`` = TP / (TP + FP + FN), ``overall_accuracy`` = correct / all pixels, ``f1_changed`` =
    2TP / (2TP + FP + FN), in percent, from a 2x2 (target, prediction) confusion matrix."""
    if confusion.shape != (2, 2):
        raise ValueError(f"change detection has 2 classes, got a {confusion.shape} confusion matrix")
    true_positive, false_negative, false_positive = confusion[1, 1], confusion[1, 0], confusion[0, 1]
    iou = iou_per_class(confusion)[1]
    total = confusion.sum()
    f1_denominator = 2 * true_positive + false_positive + false_negative
    return {
        "iou_changed": float(np.nan_to_num(iou) * 100.0),
        "overall_accuracy": float(np.trace(confusion) / total * 100.0) if total else 0.0,
        "f1_changed": float(2 * true_positive / f1_denominator * 100.0) if f1_denominator else 0.0,
    }


class ClassificationTask:
    """Image-level labels (SPEC §9). The engine reads its data through ``unimatch.data.classification``
    (``unimatch.engine.classification``); its headline is the top-1 accuracy of the evaluation."""

    name = "classification"
    input_images = 1
    headline = "top1"
    eval_batch_size = 64  # images of one size
    background_class = None  # every class is an object: no object/foreground pseudo-label shares

    def build_network(self, model: ModelSettings, nclass: int, input_size: int) -> nn.Module:
        """A wide ResNet (``model.network``) or the encoder with a pooled linear head, channel dropout on the
        pooled feature."""
        return build_classifier(model.encoder, nclass, model.network, input_size, model.undropped_fraction)

    def scores(self, confusion: np.ndarray) -> dict[str, float]:
        """Top-1 accuracy (percent): every pixel of an evaluation image is its one prediction."""
        total = confusion.sum()
        return {"top1": float(np.trace(confusion) / total * 100.0) if total else 0.0}


TASKS = {task.name: task for task in (SegmentationTask(), ChangeDetectionTask(), ClassificationTask())}


def task_for(dataset: str) -> SegmentationTask:
    """The task of dataset layout ``dataset`` (config ``dataset.name``)."""
    return TASKS[layout_task(dataset)]
