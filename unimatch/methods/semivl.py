"""SemiVL (SPEC §13): UniMatch V1's consistency on a CLIP encoder with the language-guided decoder, plus dense
CLIP guidance from a frozen copy of the encoder as it was before training.

L = ½(L_x + ½L_fp + ¼L_s1 + ¼L_s2) + λ_DC(t)·(½L_dc,fp + ¼L_dc,s1 + ¼L_dc,s2), λ_DC decaying linearly over the
whole training (0.1 -> 0), the guidance terms not halved, as the released code. The guidance label of a
pixel is the frozen encoder's zero-shot class (softmax of 100·cosine to the class text embeddings, concepts
max-aggregated to their class), ignored below confidence ζ (0.9) and on padding; its loss is summed over
pixels and divided by all of them (the code's ``mean_all``).

Pseudo labels: with ``teacher: student`` (default, the released code) they are the student's own train-mode
predictions on the weak view, from the same forward pass as the labeled images (the model has no dropout,
so train and eval mode agree); ``teacher: ema`` uses the EMA teacher in eval mode instead. The CutMix
partner is the flipped batch (this engine's convention), not the code's second unlabeled batch.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import ConfigError
from ..models import Segmentor, load_encoder_weights
from ..models.decoders.vlg import VLGHead
from ..models.segmentor import random_channel_masks
from ..models.text import (
    TextEmbeddingError,
    aggregate_concepts,
    concept_classes,
    load_text_embeddings,
    read_class_concepts,
)
from ..settings import ModelSettings, PseudoLabelSettings
from .base import (
    PADDING,
    LabeledBatch,
    Method,
    PseudoLabels,
    StepLosses,
    UnlabeledBatch,
    cutmix_images,
    cutmix_pseudo,
    mask_ratio,
    pixel_loss,
    pseudo_label,
    register_method,
)

IGNORE = 255
CLIP_LOGIT_SCALE = 100.0  # CLIP's temperature on cosine similarities


class SemiVLSettings(PseudoLabelSettings):
    teacher: Literal["ema", "student"] | None = "student"  # the released code: no EMA teacher
    guidance_weight: float = Field(0.1, ge=0.0)  # λ_DC at the first iteration (Table S1: 0.1)
    guidance_final_weight: float = Field(0.0, ge=0.0)  # λ_DC at the end, reached linearly
    guidance_threshold: float = Field(0.9, ge=0.0, le=1.0)  # ζ: guidance labels below this confidence are ignored
    # The guidance's text rows (e.g. concept lists from annotation guidelines); null: the decoder's own rows.
    guidance_text_embeddings: str | None = None
    guidance_concepts: str | None = None  # classes file of guidance_text_embeddings (one class per line, concepts by |)


def guidance_labels(
    dense: torch.Tensor,
    text: torch.Tensor,
    row_class: torch.Tensor,
    nclass: int,
    ignore: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """Zero-shot labels (B, H, W) from dense CLIP embeddings (B, E, h, w) and text rows (R, E): cosine per row,
    max over each class's concepts, upsampled to the image, softmax(100·cos); 255 below ``threshold`` and
    where ``ignore`` marks padding."""
    cosine = torch.einsum("bchw,nc->bnhw", F.normalize(dense.float(), dim=1), F.normalize(text.float(), dim=1))
    cosine = F.interpolate(
        aggregate_concepts(cosine, row_class, nclass), ignore.shape[-2:], mode="bilinear", align_corners=False
    )
    confidence, label = (CLIP_LOGIT_SCALE * cosine).softmax(dim=1).max(dim=1)
    return label.masked_fill((confidence < threshold) | (ignore == PADDING), IGNORE)


def guidance_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the guided pixels, divided by ALL pixels (the code's ``mean_all``)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum") / labels.numel()


def linear_decay(start: float, end: float, iteration: int, total: int) -> float:
    progress = iteration / total
    return start * (1.0 - progress) + end * progress


@register_method("semivl", "SemiVL")
class SemiVL(Method):
    Settings = SemiVLSettings

    @classmethod
    def build_model(cls, model: Segmentor, settings: SemiVLSettings, input_size: int) -> Segmentor:
        if not isinstance(model.head, VLGHead):
            raise ConfigError(
                "model.decoder: semivl trains the language-guided decoder: set model.decoder=vlg "
                "(with a CLIP encoder, clip-b16 or clip-tiny, and its text embeddings)"
            )
        return model

    def on_device(self, model: Segmentor, model_cfg: ModelSettings, device: torch.device) -> None:
        """The frozen guidance encoder: the pre-trained weights (``model.weights``) or, without them, a copy of the
        encoder as built, before any resume (a resumed run copies the same seeded initialisation)."""
        guide = copy.deepcopy(model.encoder)
        if model_cfg.weights:
            load_encoder_weights(guide, model_cfg.weights)
        self.guide = guide.to(device).eval().requires_grad_(False)
        self.nclass = model.head.nclass
        self.text, self.row_class = self._guidance_text(model.head)
        self.text, self.row_class = self.text.to(device), self.row_class.to(device)

    def _guidance_text(self, head: VLGHead) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cfg.guidance_text_embeddings:
            return head.text_embeddings.detach().clone(), head.classifier.row_class.clone()
        rows = None
        if self.cfg.guidance_concepts:
            classes = read_class_concepts(self.cfg.guidance_concepts)
            if len(classes) != self.nclass:
                raise ConfigError(
                    f"method.guidance_concepts: {self.cfg.guidance_concepts} lists {len(classes)} classes but "
                    f"dataset.nclass is {self.nclass}"
                )
            rows = concept_classes(classes)
        try:
            text = load_text_embeddings(self.cfg.guidance_text_embeddings, len(rows) if rows else self.nclass)
        except TextEmbeddingError as error:
            raise ConfigError(f"method.guidance_text_embeddings: {error}") from None
        return text, torch.tensor(rows if rows else range(self.nclass), dtype=torch.long)

    @torch.no_grad()
    def guide_labels(self, weak: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
        dense = self.guide(weak)[-1]
        return guidance_labels(dense, self.text, self.row_class, self.nclass, ignore, self.cfg.guidance_threshold)

    def guidance_weight(self) -> float:
        """λ_DC of the current step: linear from ``guidance_weight`` to ``guidance_final_weight`` over training."""
        return linear_decay(
            self.cfg.guidance_weight, self.cfg.guidance_final_weight, self.progress.iteration, self.progress.total
        )

    def step(self, student, teacher, labeled: LabeledBatch, unlabeled: UnlabeledBatch) -> StepLosses:
        strong1 = cutmix_images(unlabeled.strong1, unlabeled.box1)
        strong2 = cutmix_images(unlabeled.strong2, unlabeled.box2)
        n_l, n_u, size = labeled.image.shape[0], unlabeled.weak.shape[0], labeled.image.shape[-2:]
        maps = student.features(torch.cat((labeled.image, unlabeled.weak, strong1, strong2)))
        # Dropout2d(0.5) on each level (skips and dense embedding) of the weak view: the feature-perturbed stream.
        weak_maps = [
            m[n_l : n_l + n_u] * random_channel_masks(n_u, m.shape[1], m.device)[:, :, None, None].to(m.dtype)
            for m in maps
        ]
        pred_x, pred_w = student.decode([m[: n_l + n_u] for m in maps], size).split((n_l, n_u))
        pred_fp = student.decode(weak_maps, size)
        pred_s1, pred_s2 = student.decode([m[n_l + n_u :] for m in maps], size).chunk(2)
        if teacher is student:  # the released code: the student's train-mode prediction, detached
            confidence, label = pred_w.detach().float().softmax(dim=1).max(dim=1)
            pseudo = PseudoLabels(label, confidence, unlabeled.ignore)
        else:
            pseudo = pseudo_label(teacher, unlabeled.weak, unlabeled.ignore)
        threshold = self.cfg.threshold
        loss_u = (
            0.5 * pixel_loss(pred_fp, pseudo, threshold)
            + 0.25 * pixel_loss(pred_s1, cutmix_pseudo(pseudo, unlabeled.box1), threshold)
            + 0.25 * pixel_loss(pred_s2, cutmix_pseudo(pseudo, unlabeled.box2), threshold)
        )
        losses = self.combine(self.labeled_loss(pred_x, labeled.mask), loss_u, mask_ratio(pseudo, threshold))
        weight = self.guidance_weight()
        if weight == 0.0:
            return losses
        guided = self.guide_labels(unlabeled.weak, unlabeled.ignore)
        mixed = [torch.where(box.bool(), guided.flip(0), guided) for box in (unlabeled.box1, unlabeled.box2)]
        loss_dc = (
            0.5 * guidance_loss(pred_fp, guided)
            + 0.25 * guidance_loss(pred_s1, mixed[0])
            + 0.25 * guidance_loss(pred_s2, mixed[1])
        )
        return StepLosses(losses.loss + weight * loss_dc, losses.labeled, losses.unlabeled, losses.mask_ratio)
