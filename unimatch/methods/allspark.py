"""AllSpark (SPEC §12): labeled features reborn from unlabeled ones by channel-wise cross-attention on the
encoder's last level (``unimatch.models.allspark``), trained as plain pseudo-labelling.

As the reference ``train_allspark.py``: the pseudo labels are the argmax of an eval-mode forward of the
weak unlabeled image (by the student itself unless ``teacher: ema``), with no confidence threshold; the
labeled and unlabeled images go through the model in one batch, labeled first; loss = (CE_l + CE_u) / 2.
Unlabeled images get the weak augmentation only (no CutMix), labeled ones the colour jitter, grayscale and
blur on top. The memory is filled from the first step and read by the labeled images from epoch
``warmup_epoch`` on (the reference's ``set_SMem_status``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch.utils.data import Dataset

from ..data import Sample, StrongLabeledDataset
from ..errors import ConfigError
from ..models import Segmentor
from ..models.allspark import AllSpark as AllSparkModule
from ..settings import PseudoLabelSettings
from .base import (
    LabeledBatch,
    Method,
    StepLosses,
    UnlabeledBatch,
    eval_logits,
    mask_ratio,
    pixel_loss,
    pseudo_labels_of,
    register_method,
)

if TYPE_CHECKING:
    from ..tasks import SegmentationTask as Task


class AllSparkSettings(PseudoLabelSettings):
    threshold: float = Field(0.0, ge=0.0, le=1.0)  # the reference keeps every pseudo label
    teacher: Literal["ema", "student"] | None = "student"  # the reference: the student in eval mode
    warmup_epoch: int = Field(5, ge=0)  # epochs (from 0) before the labeled images read the memory
    heads: int = Field(2, ge=1)  # attention heads, each the full channel width
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)


@register_method("allspark", "AllSpark")
class AllSpark(Method):
    Settings = AllSparkSettings

    @classmethod
    def build_model(cls, model: Segmentor, settings: AllSparkSettings, input_size: int) -> Segmentor:
        """The AllSpark module on the encoder's last level; its memory holds that level's token grid of a
        training crop (513 -> 17 x 17 in the reference; here crops are multiples of the stride)."""
        level = model.encoder.feature_info[-1]
        if input_size % level.stride:
            raise ConfigError(
                f"dataset.crop_size: {input_size} is not a multiple of {level.stride}, the stride of the level "
                "AllSpark refines: its memory holds the whole token grid of a training crop"
            )
        tokens = (input_size // level.stride) ** 2
        model.neck = AllSparkModule(level.channels, model.nclass, tokens, settings.heads, settings.attention_dropout)
        return model

    def labeled_dataset(self, labeled: Sequence[Sample], root: str, nclass: int, crop: int, task: Task) -> Dataset:
        """The labeled crops with the strong colour augmentations on top, no CutOut (the reference)."""
        return StrongLabeledDataset(labeled, nclass, crop, cutout=False)  # segmentation only (the default ``tasks``)

    def step(self, student, teacher, labeled: LabeledBatch, unlabeled: UnlabeledBatch) -> StepLosses:
        logits_u = eval_logits(teacher, unlabeled.weak)
        pseudo = pseudo_labels_of(logits_u, unlabeled.ignore)
        count, size = labeled.image.shape[0], labeled.image.shape[-2:]
        maps = student.features(torch.cat((labeled.image, unlabeled.weak)))
        use_memory = self.progress.epoch >= self.cfg.warmup_epoch
        preds = student.decode(student.neck(maps, labeled=count, guide=logits_u, use_memory=use_memory), size)
        loss_u = pixel_loss(preds[count:], pseudo, self.cfg.threshold)
        return self.combine(
            self.labeled_loss(preds[:count], labeled.mask), loss_u, mask_ratio(pseudo, self.cfg.threshold)
        )
