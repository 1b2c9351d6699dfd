"""Supervised baseline: labeled images only, on the schedule the authors' ``supervised.py`` ran."""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import ConfigError
from ..settings import MethodSettings
from .base import LabeledBatch, Method, Pools, Schedule, StepLosses, register_method


class LabeledOnlySettings(MethodSettings):
    # reference: the authors' supervised.py, the labeled list tiled to dataset.labeled_epoch_samples per epoch
    # (Pascal 3000: 93 iterations on Pascal-92) with the batch doubled; unlabeled: as many iterations as the
    # semi-supervised methods (one pass over the unlabeled pool); auto: reference where the dataset
    # declares labeled_epoch_samples (the real datasets), else unlabeled (the embedded data, folders).
    schedule: Literal["auto", "reference", "unlabeled"] = "auto"


@register_method("labeled_only", "labeled-only")
class LabeledOnly(Method):
    tasks = ("segmentation", "change_detection", "classification")
    uses_unlabeled = False
    Settings = LabeledOnlySettings

    def schedule(self, pools: Pools, batch: int, world: int) -> Schedule:
        """The labeled batch is doubled (the reference's 16 + 16 becomes 32 labeled)."""
        kind = self.cfg.schedule
        if kind == "auto":
            kind = "reference" if pools.labeled_epoch_samples else "unlabeled"
        if kind == "reference":
            if not pools.labeled_epoch_samples:
                raise ConfigError(
                    "method.schedule: 'reference' needs dataset.labeled_epoch_samples (e.g. 3000 on Pascal)"
                )
            samples = max(pools.labeled_epoch_samples, pools.labeled)  # a longer list is used whole
            return Schedule(
                samples // (2 * batch * world),
                2 * batch,
                samples,
                f"labeled samples per epoch (dataset.labeled_epoch_samples, {pools.labeled_split})",
            )
        if pools.unlabeled:
            return Schedule(
                pools.unlabeled // (batch * world),
                2 * batch,
                pools.unlabeled,
                f"unlabeled images of {pools.unlabeled_split}",
            )
        # every image labeled (the fully supervised reference): one pass over them
        return Schedule(
            pools.labeled // (batch * world), 2 * batch, pools.labeled, f"labeled images of {pools.labeled_split}"
        )

    def step(self, student, teacher, labeled: LabeledBatch, unlabeled=None) -> StepLosses:
        loss = self.labeled_loss(student(labeled.image), labeled.mask)
        zero = torch.zeros((), device=loss.device)
        return StepLosses(loss, loss.detach(), zero, zero)
