"""FixMatch with distribution alignment (ReMixMatch's form, SPEC §9): the teacher's class probabilities on the
weak view are aligned before thresholding, p <- normalise(p * p_target / p_mean), where p_mean is the running
mean of the unlabeled predictions over the last ``da_window`` steps and p_target the labeled class
distribution (uniform: the labeled splits draw N images per class). The baseline of Tables 15-17."""

from __future__ import annotations

from collections import deque

import torch
from pydantic import Field

from ..settings import PseudoLabelSettings
from .base import (
    LabeledBatch,
    Method,
    PseudoLabels,
    StepLosses,
    UnlabeledBatch,
    eval_logits,
    joint_forward,
    mask_ratio,
    pixel_loss,
    register_method,
)


class FixMatchDASettings(PseudoLabelSettings):
    da_window: int = Field(128, ge=1)  # ReMixMatch: the running mean over the last 128 batches


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
        """Record this batch's mean prediction, then align the batch (uniform target)."""
        classes = probabilities.shape[1]
        self.means.append(probabilities.transpose(0, 1).reshape(classes, -1).mean(dim=1))
        running = torch.stack(tuple(self.means)).mean(dim=0)
        target = torch.full_like(running, 1.0 / classes)
        return align_distribution(probabilities, running, target)


@register_method("fixmatch_da", "FixMatch + DA")
class FixMatchDA(Method):
    tasks = ("classification",)
    Settings = FixMatchDASettings

    def __init__(self, settings: FixMatchDASettings, labeled_loss):
        super().__init__(settings, labeled_loss)
        self.alignment = DistributionAlignment(settings.da_window)

    def step(self, student, teacher, labeled: LabeledBatch, unlabeled: UnlabeledBatch) -> StepLosses:
        probabilities = self.alignment(eval_logits(teacher, unlabeled.weak).softmax(dim=1))
        confidence, label = probabilities.max(dim=1)
        pseudo = PseudoLabels(label, confidence, unlabeled.ignore)
        pred_x, pred_s = joint_forward(student, labeled.image, [unlabeled.strong1])
        loss_u = pixel_loss(pred_s, pseudo, self.cfg.threshold)
        return self.combine(self.labeled_loss(pred_x, labeled.mask), loss_u, mask_ratio(pseudo, self.cfg.threshold))
