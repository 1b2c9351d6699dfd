"""UniMatch V2: two strong views through one shared stream with complementary channel dropout.

``streams`` selects Table 6's variants: ``complementary`` (the method), ``single`` (a: one strong view
with random channel dropout), ``image_only`` (b: two strong views, no feature dropout), ``random``
(c: two strong views, independent random dropouts).
"""

from __future__ import annotations

from typing import Literal

from ..settings import PseudoLabelSettings
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

STREAM_DROPOUT = {"complementary": "complementary", "single": "random", "image_only": None, "random": "random"}


class UniMatchV2Settings(PseudoLabelSettings):
    # Table 6's stream designs: complementary (ours), single (a), image_only (b), random (c)
    streams: Literal["complementary", "single", "image_only", "random"] = "complementary"


@register_method("unimatch_v2", "UniMatch V2")
class UniMatchV2(Method):
    tasks = ("segmentation", "change_detection", "classification")
    Settings = UniMatchV2Settings

    def step(self, student, teacher, labeled: LabeledBatch, unlabeled: UnlabeledBatch) -> StepLosses:
        pseudo = pseudo_label(teacher, unlabeled.weak, unlabeled.ignore)
        boxes = [unlabeled.box1] if self.cfg.streams == "single" else [unlabeled.box1, unlabeled.box2]
        views = [cutmix_images(image, box) for image, box in zip((unlabeled.strong1, unlabeled.strong2), boxes)]
        pred_x, pred_views = joint_forward(student, labeled.image, views, STREAM_DROPOUT[self.cfg.streams])
        losses = [
            pixel_loss(pred, cutmix_pseudo(pseudo, box), self.cfg.threshold)
            for pred, box in zip(pred_views.chunk(len(views)), boxes)
        ]
        loss_u = sum(losses) / len(losses)
        return self.combine(self.labeled_loss(pred_x, labeled.mask), loss_u, mask_ratio(pseudo, self.cfg.threshold))
