"""Labeled losses: cross-entropy with ignore index 255, and OHEM cross-entropy (Cityscapes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = 255


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hardest pixels: those whose true-class probability is <= a threshold.

    The threshold is raised to the ``min_kept``-th smallest probability when fewer pixels fall under it,
    so at least ``min_kept`` pixels always contribute (the reference ProbOhemCrossEntropy2d rule).
    """

    def __init__(self, threshold: float = 0.7, min_kept: int = 200000, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.threshold = threshold
        self.min_kept = min_kept
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        num_valid = int(valid.sum())
        if 0 < num_valid and self.min_kept <= num_valid:
            with torch.no_grad():
                prob = logits.float().softmax(dim=1)
                true_prob = prob.gather(1, target.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
                true_prob = true_prob.masked_fill(~valid, 1.0)
                kth = true_prob.flatten().kthvalue(self.min_kept).values
                threshold = torch.maximum(kth, torch.tensor(self.threshold, device=kth.device))
                target = target.masked_fill(true_prob > threshold, self.ignore_index)
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index)


def build_labeled_loss(kind: str, threshold: float = 0.7, min_kept: int = 200000) -> nn.Module:
    if kind == "ce":
        return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    if kind == "ohem":
        return OhemCrossEntropy(threshold, min_kept)
    raise ValueError(f"train.labeled_loss must be 'ce' or 'ohem', got '{kind}'")
