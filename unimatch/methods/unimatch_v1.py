"""UniMatch V1: a feature-perturbed stream (channel dropout on the weak view's encoder features) plus
two strong image streams: L_u = 1/2 L_fp + 1/4 L_s1 + 1/4 L_s2."""

from __future__ import annotations

import torch

from ..models.segmentor import random_channel_masks
from .base import (
    LabeledBatch,
    Method,
    StepLosses,
    UnlabeledBatch,
    cutmix_images,
    cutmix_pseudo,
    mask_ratio,
    pixel_loss,
    pseudo_label,
    register_method,
)


@register_method("unimatch_v1", "UniMatch V1")
class UniMatchV1(Method):
    tasks = ("segmentation", "change_detection")

    def step(self, student, teacher, labeled: LabeledBatch, unlabeled: UnlabeledBatch) -> StepLosses:
        pseudo = pseudo_label(teacher, unlabeled.weak, unlabeled.ignore)
        strong1 = cutmix_images(unlabeled.strong1, unlabeled.box1)
        strong2 = cutmix_images(unlabeled.strong2, unlabeled.box2)
        n_l, n_u, size = labeled.image.shape[0], unlabeled.weak.shape[0], labeled.image.shape[-2:]
        maps = student.features(torch.cat((labeled.image, unlabeled.weak, strong1, strong2)))
        # Dropout2d(0.5) on each feature level independently, as the reference feature perturbation.
        weak_maps = [
            m[n_l : n_l + n_u] * random_channel_masks(n_u, m.shape[1], m.device)[:, :, None, None].to(m.dtype)
            for m in maps
        ]
        pred_x = student.decode([m[:n_l] for m in maps], size)
        pred_fp = student.decode(weak_maps, size)
        pred_s1, pred_s2 = student.decode([m[n_l + n_u :] for m in maps], size).chunk(2)
        threshold = self.cfg.threshold
        loss_u = (
            0.5 * pixel_loss(pred_fp, pseudo, threshold)
            + 0.25 * pixel_loss(pred_s1, cutmix_pseudo(pseudo, unlabeled.box1), threshold)
            + 0.25 * pixel_loss(pred_s2, cutmix_pseudo(pseudo, unlabeled.box2), threshold)
        )
        return self.combine(self.labeled_loss(pred_x, labeled.mask), loss_u, mask_ratio(pseudo, threshold))
