"""FixMatch: one strong (CutMix) view learns the teacher's confident pseudo labels of the weak view; with
``distribution_alignment`` the teacher's probabilities are aligned first (FixMatch + DA, SPEC §9)."""

from __future__ import annotations

from pydantic import Field

from ..settings import PseudoLabelSettings
from .alignment import DistributionAlignment
from .base import (
    LabeledBatch,
    Method,
    PseudoLabels,
    StepLosses,
    UnlabeledBatch,
    cutmix_images,
    cutmix_pseudo,
    eval_logits,
    joint_forward,
    mask_ratio,
    pixel_loss,
    pseudo_label,
    register_method,
)


class FixMatchSettings(PseudoLabelSettings):
    # ReMixMatch's distribution alignment of the pseudo labels (the classification baseline of Tables 15-17)
    distribution_alignment: bool = False
    da_window: int = Field(128, ge=1)  # steps in the running mean of the unlabeled predictions (ReMixMatch: 128)


@register_method("fixmatch", "FixMatch")
class FixMatch(Method):
    tasks = ("segmentation", "change_detection", "classification")
    Settings = FixMatchSettings

    def __init__(self, settings: FixMatchSettings, labeled_loss):
        super().__init__(settings, labeled_loss)
        self.alignment = DistributionAlignment(settings.da_window) if settings.distribution_alignment else None

    def pseudo_labels(self, teacher, unlabeled: UnlabeledBatch) -> PseudoLabels:
        if self.alignment is None:
            return pseudo_label(teacher, unlabeled.weak, unlabeled.ignore)
        confidence, label = self.alignment(eval_logits(teacher, unlabeled.weak).softmax(dim=1)).max(dim=1)
        return PseudoLabels(label, confidence, unlabeled.ignore)

    def step(self, student, teacher, labeled: LabeledBatch, unlabeled: UnlabeledBatch) -> StepLosses:
        pseudo = self.pseudo_labels(teacher, unlabeled)
        strong = cutmix_images(unlabeled.strong1, unlabeled.box1)
        pred_x, pred_s = joint_forward(student, labeled.image, [strong])
        loss_u = pixel_loss(pred_s, cutmix_pseudo(pseudo, unlabeled.box1), self.cfg.threshold)
        return self.combine(self.labeled_loss(pred_x, labeled.mask), loss_u, mask_ratio(pseudo, self.cfg.threshold))
