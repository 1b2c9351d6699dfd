"""Dataset-wide confusion matrix and IoU (ignore label 255)."""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates a (nclass, nclass) matrix of (target, prediction) pixel counts on the device."""

    def __init__(self, nclass: int, device: torch.device | str = "cpu"):
        self.nclass = nclass
        self.matrix = torch.zeros(nclass * nclass, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        valid = target != IGNORE_INDEX
        index = target[valid].long() * self.nclass + prediction[valid].long()
        self.matrix += torch.bincount(index, minlength=self.nclass * self.nclass)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrices of all ranks (each counted its own shard of the images)."""
        torch.distributed.all_reduce(self.matrix)

    def numpy(self) -> np.ndarray:
        return self.matrix.view(self.nclass, self.nclass).cpu().numpy()


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """intersection / union per class over the whole dataset; NaN for classes absent from both."""
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU in percent over classes that occur in the targets or predictions."""
    ious = iou_per_class(confusion)
    return float(np.nanmean(ious) * 100.0) if np.isfinite(ious).any() else 0.0
