"""FixMatch: one strong (CutMix) view learns the teacher's confident pseudo labels of the weak view."""

from __future__ import annotations

from .base import (
    LabeledBatch,
    Method,
    StepLosses,
    UnlabeledBatch,
    cutmix_images,
    cutmix_pseudo,
    joint_forward,
    mask_ratio,
    pixel_loss,
    pseudo_label,
    register_method,
)


@register_method("fixmatch", "FixMatch")
class FixMatch(Method):
    tasks = ("segmentation", "change_detection", "classification")

    def step(self, student, teacher, labeled: LabeledBatch, unlabeled: UnlabeledBatch) -> StepLosses:
        pseudo = pseudo_label(teacher, unlabeled.weak, unlabeled.ignore)
        strong = cutmix_images(unlabeled.strong1, unlabeled.box1)
        pred_x, pred_s = joint_forward(student, labeled.image, [strong])
        loss_u = pixel_loss(pred_s, cutmix_pseudo(pseudo, unlabeled.box1), self.cfg.threshold)
        return self.combine(self.labeled_loss(pred_x, labeled.mask), loss_u, mask_ratio(pseudo, self.cfg.threshold))
