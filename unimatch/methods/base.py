"""What every method shares: pseudo labels from the teacher, CutMix mixing, the masked pixel loss.

A method is a small class that turns one labeled and one unlabeled batch into losses; the engine
(``unimatch.engine``) owns everything else (data, optimiser, EMA, AMP, logging, checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MethodConfig
from ..models import Segmentor
from ..models.segmentor import FeatureDrop

PADDING = 255  # value of the unlabeled ignore mask on padded pixels


@dataclass
class LabeledBatch:
    image: torch.Tensor  # (B, 3, H, W) normalised
    mask: torch.Tensor  # (B, H, W) int64, 255 = ignore


@dataclass
class UnlabeledBatch:
    weak: torch.Tensor  # (B, 3, H, W)
    strong1: torch.Tensor
    strong2: torch.Tensor
    ignore: torch.Tensor  # (B, H, W) int64, 255 on padding, 0 elsewhere
    box1: torch.Tensor  # (B, H, W) 0/1 CutMix boxes of the two strong views
    box2: torch.Tensor


@dataclass
class PseudoLabels:
    label: torch.Tensor  # (B, H, W) argmax of the teacher on the weak view
    confidence: torch.Tensor  # (B, H, W) max softmax
    ignore: torch.Tensor  # (B, H, W) 255 on padding


@dataclass
class StepLosses:
    loss: torch.Tensor
    labeled: torch.Tensor
    unlabeled: torch.Tensor
    mask_ratio: torch.Tensor  # confident share of non-padding pixels


@torch.no_grad()
def pseudo_label(teacher: nn.Module, weak: torch.Tensor, ignore: torch.Tensor) -> PseudoLabels:
    """Teacher predictions in eval mode without gradients (the student as teacher goes back to train)."""
    was_training = teacher.training
    teacher.eval()
    logits = teacher(weak).float()
    teacher.train(was_training)
    confidence, label = logits.softmax(dim=1).max(dim=1)
    return PseudoLabels(label, confidence, ignore)


def cutmix_images(images: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Inside sample i's box, paste sample B-1-i (the batch flipped), as the reference code does."""
    return torch.where(box.unsqueeze(1).bool(), images.flip(0), images)


def cutmix_pseudo(pseudo: PseudoLabels, box: torch.Tensor) -> PseudoLabels:
    """Mix pseudo label, confidence and padding mask with the same box and partner as the images."""
    inside = box.bool()
    return PseudoLabels(
        torch.where(inside, pseudo.label.flip(0), pseudo.label),
        torch.where(inside, pseudo.confidence.flip(0), pseudo.confidence),
        torch.where(inside, pseudo.ignore.flip(0), pseudo.ignore),
    )


def pixel_loss(logits: torch.Tensor, pseudo: PseudoLabels, threshold: float) -> torch.Tensor:
    """CE to the pseudo label on confident non-padding pixels, normalised by ALL non-padding pixels."""
    per_pixel = F.cross_entropy(logits.float(), pseudo.label, reduction="none")
    real = pseudo.ignore != PADDING
    kept = (pseudo.confidence >= threshold) & real
    return (per_pixel * kept).sum() / real.sum().clamp(min=1)


def mask_ratio(pseudo: PseudoLabels, threshold: float) -> torch.Tensor:
    real = pseudo.ignore != PADDING
    return ((pseudo.confidence >= threshold) & real).sum() / real.sum().clamp(min=1)


def joint_forward(
    student: Segmentor, labeled: torch.Tensor, views: list[torch.Tensor], drop: FeatureDrop = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder pass over labeled images and unlabeled views (the encoder is per-sample, so this
    equals separate passes at a better batch size); labeled decoded plainly, views with ``drop``."""
    maps = student.features(torch.cat((labeled, *views)))
    count, size = labeled.shape[0], labeled.shape[-2:]
    pred_labeled = student.decode([m[:count] for m in maps], size)
    pred_views = student.decode([m[count:] for m in maps], size, drop)
    return pred_labeled, pred_views


class Method:
    """Base class: ``step`` returns the losses of one iteration. ``uses_unlabeled`` tells the engine
    whether to load unlabeled batches (and keep a teacher) at all; ``settings`` names the fields of the
    method config section it reads, the ones logged as its parameters."""

    uses_unlabeled = True
    settings: tuple[str, ...] = ("threshold", "unlabeled_weight", "teacher", "ema_decay")

    def __init__(self, cfg: MethodConfig, labeled_loss: nn.Module):
        self.cfg = cfg
        self.labeled_loss = labeled_loss

    def step(self, student: Segmentor, teacher: nn.Module, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None) -> StepLosses:
        raise NotImplementedError

    def combine(self, loss_labeled: torch.Tensor, loss_unlabeled: torch.Tensor, ratio: torch.Tensor) -> StepLosses:
        """Total = (L_l + lambda * L_u) / 2, the reference weighting."""
        total = (loss_labeled + self.cfg.unlabeled_weight * loss_unlabeled) / 2.0
        return StepLosses(total, loss_labeled.detach(), loss_unlabeled.detach(), ratio.detach())
