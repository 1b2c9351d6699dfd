"""Evaluation: "original" (resize to a multiple of the encoder's size divisor) and "sliding window" inference,
dataset-wide mIoU."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import IGNORE_INDEX, ConfusionMatrix, iou_per_class, mean_iou
from ..utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    miou: float  # percent
    per_class_iou: dict[str, float]  # percent, NaN for classes absent from targets and predictions
    confusion: np.ndarray = field(repr=False)


def nearest_multiple(size: int, multiple: int) -> int:
    return max(multiple, int(size / multiple + 0.5) * multiple)


def size_divisor(model: nn.Module) -> int:
    """What the model's input sides must be multiples of (its encoder's declaration; 1 for other models)."""
    return getattr(model, "size_divisor", 1)


def predict_original(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Resize (bilinear, align_corners) to the nearest multiples of the size divisor, predict, resize logits back."""
    height, width = image.shape[-2:]
    divisor = size_divisor(model)
    resized = F.interpolate(
        image,
        (nearest_multiple(height, divisor), nearest_multiple(width, divisor)),
        mode="bilinear",
        align_corners=True,
    )
    logits = model(resized)
    return F.interpolate(logits.float(), (height, width), mode="bilinear", align_corners=True)


def original_tokens(model: nn.Module, height: int, width: int) -> int:
    """Positions at the size-divisor stride (a ViT's patch tokens) of one "original"-mode forward pass."""
    divisor = size_divisor(model)
    return (nearest_multiple(height, divisor) // divisor) * (nearest_multiple(width, divisor) // divisor)


def exceeds_token_budget(model: nn.Module, mode: str, height: int, width: int, max_tokens: int | None) -> bool:
    """Whether "original" inference of this image would run one pass over more than ``max_tokens``
    tokens (quadratic attention: an 8000x8000 image is ~326k tokens at patch 14); such images are
    predicted in sliding windows instead."""
    return mode == "original" and max_tokens is not None and original_tokens(model, height, width) > max_tokens


def predict_image(
    model: nn.Module,
    image: torch.Tensor,
    mode: str,
    window: int | None,
    stride_ratio: float = 2 / 3,
    window_batch: int = 8,
    max_tokens: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Logits (or summed window probabilities) of ``image`` in ``mode``, switching to sliding windows
    above the token budget. An encoder built for one input size (``fixed_input_size``) always sees
    windows of that size."""
    fixed = getattr(model, "fixed_input_size", None)
    if fixed:
        return predict_sliding(model, image, fixed, stride_ratio, window_batch, progress)
    if mode == "sliding" or exceeds_token_budget(model, mode, *image.shape[-2:], max_tokens):
        return predict_sliding(model, image, window, stride_ratio, window_batch, progress)
    return predict_original(model, image)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets with the given stride; the last window ends at the border (no partial windows)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def predict_sliding(
    model: nn.Module, image: torch.Tensor, window: int, stride_ratio: float, batch: int = 8, progress: bool = False
) -> torch.Tensor:
    """Sum of softmax probabilities over windows (stride = ratio x window), windows run in batches
    (``progress``: a bar over them, for very large images).

    Images smaller than the window are zero-padded (zero = the mean colour after normalisation)."""
    height, width = image.shape[-2:]
    padded = F.pad(image, (0, max(0, window - width), 0, max(0, window - height)))
    stride = max(1, int(window * stride_ratio))
    offsets = [
        (top, left)
        for top in window_starts(padded.shape[-2], window, stride)
        for left in window_starts(padded.shape[-1], window, stride)
    ]
    probs = None
    for chunk_start in progress_bar(
        range(0, len(offsets), batch), desc="windows", unit="batch", disable=not progress, leave=False
    ):
        chunk = offsets[chunk_start : chunk_start + batch]
        crops = torch.cat([padded[:, :, t : t + window, l : l + window] for t, l in chunk])
        out = model(crops).float().softmax(dim=1)
        if probs is None:
            probs = out.new_zeros((image.shape[0], out.shape[1], *padded.shape[-2:]))
        for (top, left), crop_probs in zip(chunk, out.split(image.shape[0])):
            probs[:, :, top : top + window, left : left + window] += crop_probs
    return probs[:, :, :height, :width]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    nclass: int,
    class_names: list[str] | None = None,
    mode: str = "original",
    window: int | None = None,
    stride_ratio: float = 2 / 3,
    window_batch: int = 8,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    distributed: bool = False,
    max_tokens: int | None = None,
) -> EvalResult:
    """mIoU of ``model`` over ``batches`` of (image, mask, name) at original resolution. ``distributed``:
    ``batches`` is this rank's shard and the counts of all ranks are summed (every rank gets the result).
    ``max_tokens``: in "original" mode, larger images are predicted in sliding windows."""
    if mode not in ("original", "sliding"):
        raise ValueError(f"eval.mode must be 'original' or 'sliding', got '{mode}'")
    if not window and (mode == "sliding" or max_tokens is not None):
        raise ValueError("sliding-window evaluation needs eval.window (or dataset.crop_size)")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(nclass, device)
    switched = 0
    for image, mask, _ in progress_bar(batches, desc="evaluate", unit="img", disable=not progress, leave=False):
        image, mask = image.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        switched += exceeds_token_budget(model, mode, *image.shape[-2:], max_tokens)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = predict_image(model, image, mode, window, stride_ratio, window_batch, max_tokens)
        confusion.update(logits.argmax(dim=1), mask)
    if switched:
        log.warning(
            "%d image(s) above eval.max_tokens=%d were evaluated in sliding windows of %d px",
            switched,
            max_tokens,
            window,
        )
    model.train(was_training)
    if distributed:
        confusion.all_reduce()
    matrix = confusion.numpy()
    names = class_names or [f"class_{i}" for i in range(nclass)]
    per_class = {name: float(iou * 100.0) for name, iou in zip(names, iou_per_class(matrix))}
    return EvalResult(mean_iou(matrix), per_class, matrix)


@dataclass
class PseudoLabelQuality:
    """How good a teacher's pseudo labels are, measured on unlabeled images that have ground truth (percent).

    ``precision``: confident (>= threshold) pixels whose label is right. On object-centric data most
    confident pixels are background, so this is mostly the background's precision; ``object_precision``
    is the same over the confident pixels *predicted as an object class* (any class but 0, the background
    of Pascal, COCO and the embedded data), what decides whether the unlabeled loss teaches objects or
    confirms mistakes. ``foreground_coverage``: ground-truth object pixels that are confident;
    ``foreground_recall``: those that are confident and right; ``foreground_accuracy``: object pixels
    whose arg-max label is right, confident or not; ``mask_ratio``: confident share of all pixels;
    ``class_recall``: per object class, its pixels that are confident and right."""

    precision: float
    object_precision: float
    foreground_coverage: float
    foreground_recall: float
    foreground_accuracy: float
    mask_ratio: float
    class_recall: dict[str, float] = field(default_factory=dict)

    def metrics(self, prefix: str = "pseudo/") -> dict[str, float]:
        """The defined shares as metrics: one with nothing to measure (precision while no pixel is confident,
        early in training) is NaN here and left out, as the per-class IoU of an absent class is, instead of
        a tracker warning at every evaluation."""
        values = {f"{prefix}{name}": value for name, value in self.__dict__.items() if name != "class_recall"}
        values.update({f"{prefix}class_recall/{name}": value for name, value in self.class_recall.items()})
        return {key: value for key, value in values.items() if not math.isnan(value)}


class PseudoLabelCounts:
    """Pixel counts behind :class:`PseudoLabelQuality`, accumulated over batches (and ranks) in one tensor
    (one all-reduce): nine totals, then per class its pixels and its confident-and-right pixels."""

    TOTALS = 9

    def __init__(self, nclass: int, device: torch.device | str = "cpu", background: int | None = 0) -> None:
        """``background``: the class the object shares leave out; None (classification): no such class, and
        the object and foreground shares are undefined (NaN)."""
        self.counts = torch.zeros(self.TOTALS + 2 * nclass, dtype=torch.int64, device=device)
        self.nclass, self.background = nclass, background

    def update(self, probabilities: torch.Tensor, target: torch.Tensor, threshold: float) -> None:
        """``probabilities`` (B, C, H, W) softmax of the teacher, ``target`` (B, H, W) with 255 = ignore."""
        confidence, label = probabilities.max(dim=1)
        valid = target != IGNORE_INDEX
        confident = valid & (confidence >= threshold)
        correct = valid & (label == target)
        right = confident & correct
        if self.background is None:
            foreground = confident_object = torch.zeros_like(valid)
        else:
            foreground = valid & (target != self.background)
            confident_object = confident & (label != self.background)
        totals = torch.stack(
            [
                valid.sum(),
                confident.sum(),
                right.sum(),
                foreground.sum(),
                (foreground & confident).sum(),
                (foreground & right).sum(),
                confident_object.sum(),
                (confident_object & correct).sum(),
                (foreground & correct).sum(),
            ]
        )
        per_class = torch.bincount(target[valid], minlength=self.nclass)[: self.nclass]
        per_class_right = torch.bincount(target[right], minlength=self.nclass)[: self.nclass]
        self.counts += torch.cat((totals, per_class, per_class_right))

    def result(self, class_names: list[str] | None = None) -> PseudoLabelQuality:
        counts = [int(c) for c in self.counts.cpu()]
        valid, confident, right, foreground, fg_confident, fg_right, objects, objects_right, fg_correct = counts[
            : self.TOTALS
        ]
        pixels, pixels_right = counts[self.TOTALS : self.TOTALS + self.nclass], counts[self.TOTALS + self.nclass :]
        names = class_names or [f"class_{index}" for index in range(self.nclass)]
        share = lambda part, whole: 100.0 * part / whole if whole else float("nan")  # noqa: E731
        classes = {
            names[c]: share(pixels_right[c], pixels[c])
            for c in range(self.nclass)
            if c != self.background and pixels[c]
        }
        return PseudoLabelQuality(
            share(right, confident),
            share(objects_right, objects),
            share(fg_confident, foreground),
            share(fg_right, foreground),
            share(fg_correct, foreground),
            share(confident, valid),
            classes,
        )


@torch.no_grad()
def pseudo_label_quality(
    teacher: nn.Module,
    batches: Iterable,
    threshold: float,
    nclass: int,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    distributed: bool = False,
    class_names: list[str] | None = None,
    background: int | None = 0,
) -> PseudoLabelQuality:
    """Score the teacher's confident (>= ``threshold``) pseudo labels against ground truth on ``batches`` of
    (image, mask, name): whole images at their original size, as "original" evaluation predicts them."""
    device = torch.device(device)
    was_training = teacher.training
    teacher.eval()
    counts = PseudoLabelCounts(nclass, device, background)
    for image, mask, _ in batches:
        image, mask = image.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = predict_image(teacher, image, "original", None)
        counts.update(logits.float().softmax(dim=1), mask, threshold)
    teacher.train(was_training)
    if distributed:
        torch.distributed.all_reduce(counts.counts)
    return counts.result(class_names)
