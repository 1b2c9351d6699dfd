"""Distribution alignment in ReMixMatch's form (SPEC §9), FixMatch's option ``method.distribution_alignment``
(FixMatch + DA, the baseline of Tables 15-17): the teacher's class probabilities on the weak view are aligned
before thresholding, p <- normalise(p * p_target / p_mean), where p_mean is the running mean of the unlabeled
predictions over the last ``method.da_window`` steps and p_target the labeled class distribution (uniform:
the classification splits draw N images per class)."""

from __future__ import annotations

from collections import deque

import torch


def align_distribution(probabilities: torch.Tensor, running_mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``probabilities`` (B, C, ...) scaled per class by target / running_mean, renormalised over C."""
    shape = (1, -1) + (1,) * (probabilities.dim() - 2)
    aligned = probabilities * (target / running_mean.clamp(min=1e-12)).view(shape)
    return aligned / aligned.sum(dim=1, keepdim=True)


class DistributionAlignment:
    """The running mean of the unlabeled predictions (a window of per-batch means) and the alignment."""

    def __init__(self, window: int):
        self.means: deque[torch.Tensor] = deque(maxlen=window)

    def __call__(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Record this batch's mean prediction (over images and pixels), then align the batch (uniform target)."""
        classes = probabilities.shape[1]
        self.means.append(probabilities.transpose(0, 1).reshape(classes, -1).mean(dim=1))
        running = torch.stack(tuple(self.means)).mean(dim=0)
        target = torch.full_like(running, 1.0 / classes)
        return align_distribution(probabilities, running, target)
