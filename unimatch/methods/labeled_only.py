"""Supervised baseline: labeled images only (the engine doubles the labeled batch, as the reference does)."""

from __future__ import annotations

import torch

from .base import LabeledBatch, Method, StepLosses


class LabeledOnly(Method):
    uses_unlabeled = False
    settings = ()

    def step(self, student, teacher, labeled: LabeledBatch, unlabeled=None) -> StepLosses:
        loss = self.labeled_loss(student(labeled.image), labeled.mask)
        zero = torch.zeros((), device=loss.device)
        return StepLosses(loss, loss.detach(), zero, zero)
