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
        with torch.no_grad():  # no host synchronisation: the pixel count never leaves the device
            valid = target != self.ignore_index
            prob = logits.float().softmax(dim=1)
            true_prob = prob.gather(1, target.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
            # Ignored pixels count as probability 1 (never hard): with fewer than min_kept valid pixels the
            # k-th smallest is 1 and nothing is dropped, the reference's "keep every valid pixel" case.
            true_prob = true_prob.masked_fill(~valid, 1.0)
            kth = true_prob.flatten().kthvalue(min(self.min_kept, true_prob.numel())).values
            target = target.masked_fill(true_prob > kth.clamp(min=self.threshold), self.ignore_index)
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index)


def build_labeled_loss(kind: str, threshold: float = 0.7, min_kept: int = 200000) -> nn.Module:
    if kind == "ce":
        return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    if kind == "ohem":
        return OhemCrossEntropy(threshold, min_kept)
    raise ValueError(f"train.labeled_loss must be 'ce' or 'ohem', got '{kind}'")
