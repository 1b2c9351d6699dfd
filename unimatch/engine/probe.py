"""The feature-quality probe: how much a pre-trained encoder gives a segmentation head from few labels.

UniMatch V2 presumes an encoder whose features generalise from a few labels (DINOv2 on Pascal: labeled-only
reaches 0.85 of the fully supervised score, SPEC §5). The probe measures that property on its own,
independently of any semi-supervised method: the encoder with a fresh DPT head trains on ``labeled``
images of a *development world* (the embedded generator with data seed :data:`DEV_WORLD_SEED`, which is
neither the benchmark's data seed 0 nor a split seed) and is scored on that world's validation images,
once with the encoder frozen (the features as they are) and once fine-tuned (as the benchmark trains it).

Scores (percent, on the development world's validation images): mIoU, ``foreground_accuracy`` (object
pixels whose label is right), ``object_precision`` (confident object-class predictions that are right)
and ``foreground_recall`` (object pixels confident and right), at the pseudo-label threshold 0.95.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..data.embedded import CLASSES, render_world
from ..data.transforms import normalize
from ..metrics import ConfusionMatrix, mean_iou
from ..models import build_segmentor, load_encoder_weights
from ..models.segmentor import Segmentor
from .inference import PseudoLabelCounts
from .optim import set_poly_lr

DEV_WORLD_SEED = 17  # the development world: not the benchmark's data seed (0) nor a split seed (0, 1, 2)
DEV_VAL_IMAGES = 100
THRESHOLD = 0.95  # the paper's pseudo-label threshold
POLY_POWER = 0.9  # the training schedule's decay
MODES = ("frozen", "finetuned")


class ProbeSettings(BaseModel):
    """How the probe trains (``probe:`` of a foundation recipe; ``unimatch probe key=value``)."""

    model_config = ConfigDict(extra="forbid")
    labeled: int = Field(24, ge=1)  # development-world training images with labels
    iterations: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    crop_size: int = Field(112, ge=14)
    decoder_lr: float = Field(1e-3, gt=0)
    encoder_lr: float = Field(1e-4, gt=0)  # fine-tuned mode only
    seed: int = 0
    modes: tuple[str, ...] = MODES

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or set(value) - set(MODES):
            raise ValueError(f"modes must be a non-empty subset of {list(MODES)}, got {list(value)}")
        return value


@dataclass(frozen=True)
class ProbeResult:
    mode: str
    miou: float
    foreground_accuracy: float
    object_precision: float
    foreground_recall: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _tensors(images: np.ndarray) -> torch.Tensor:
    return torch.stack([normalize(image) for image in images])


def _crops(
    images: np.ndarray, masks: np.ndarray, settings: ProbeSettings, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of random crops (flipped at random) of the labeled images."""
    count, height, width = masks.shape
    crop = settings.crop_size
    while True:
        picked, targets = [], []
        for index in torch.randint(count, (settings.batch_size,), generator=generator).tolist():
            top = int(torch.randint(height - crop + 1, (1,), generator=generator))
            left = int(torch.randint(width - crop + 1, (1,), generator=generator))
            image, mask = (
                images[index, top : top + crop, left : left + crop],
                masks[index, top : top + crop, left : left + crop],
            )
            if bool(torch.rand(1, generator=generator) < 0.5):
                image, mask = image[:, ::-1], mask[:, ::-1]
            picked.append(np.ascontiguousarray(image))
            targets.append(np.ascontiguousarray(mask))
        yield _tensors(np.stack(picked)), torch.from_numpy(np.stack(targets).astype(np.int64))


def train_probe(
    model: Segmentor, frozen: bool, images: np.ndarray, masks: np.ndarray, settings: ProbeSettings, device: torch.device
) -> None:
    """``settings.iterations`` AdamW steps (poly decay) of the head, and of the encoder unless ``frozen``."""
    groups = [{"params": model.decoder_parameters(), "lr": settings.decoder_lr}]
    if not frozen:
        groups.append({"params": model.encoder_parameters(), "lr": settings.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    batches = _crops(images, masks, settings, torch.Generator().manual_seed(settings.seed))
    model.train()
    for iteration in range(settings.iterations):
        set_poly_lr(optimizer, iteration, settings.iterations, POLY_POWER)
        image, mask = next(batches)
        loss = F.cross_entropy(model(image.to(device)), mask.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def _score(model: Segmentor, images: np.ndarray, masks: np.ndarray, device: torch.device) -> dict[str, float]:
    """Whole images, zero-padded (after normalisation) to the size divisor. (Training's "original"
    evaluation resizes to the nearest multiple instead; the probe's recorded scores use padding.)"""
    nclass = model.nclass
    confusion, counts = ConfusionMatrix(nclass, device), PseudoLabelCounts(nclass, device)
    model.eval()
    for start in range(0, len(images), 20):
        image = _tensors(images[start : start + 20]).to(device)
        target = torch.from_numpy(masks[start : start + 20].astype(np.int64)).to(device)
        height, width = image.shape[-2:]
        pad = (0, -width % model.size_divisor, 0, -height % model.size_divisor)
        probabilities = model(F.pad(image, pad))[..., :height, :width].softmax(dim=1)
        confusion.update(probabilities.argmax(dim=1), target)
        counts.update(probabilities, target, THRESHOLD)
    quality = counts.result()
    return {
        "miou": mean_iou(confusion.numpy()),
        "foreground_accuracy": quality.foreground_accuracy,
        "object_precision": quality.object_precision,
        "foreground_recall": quality.foreground_recall,
    }


def probe_encoder(
    encoder: str, weights: str | None, settings: ProbeSettings, device: torch.device | str = "cpu"
) -> list[ProbeResult]:
    """Train a DPT head (and, ``finetuned``, the encoder from ``weights``; None: random initialisation) on the
    development world's first ``settings.labeled`` training images and score it on its validation images,
    once per mode of ``settings.modes``."""
    device = torch.device(device)
    train_images, train_masks = render_world(DEV_WORLD_SEED, "train", settings.labeled)
    val_images, val_masks = render_world(DEV_WORLD_SEED, "val", DEV_VAL_IMAGES)
    results = []
    for mode in settings.modes:
        started = time.time()
        torch.manual_seed(settings.seed)
        model = build_segmentor(encoder, len(CLASSES), input_size=settings.crop_size)
        if weights:
            load_encoder_weights(model, weights)
        if mode == "frozen":
            model.freeze_encoder()
        model.to(device)
        train_probe(model, mode == "frozen", train_images, train_masks, settings, device)
        scores = _score(model, val_images, val_masks, device)
        results.append(
            ProbeResult(mode, **{k: round(v, 2) for k, v in scores.items()}, seconds=round(time.time() - started, 1))
        )
    return results


def probe_table(results: list[ProbeResult]) -> str:
    """The probe's scores as a Markdown table, one row per mode."""
    lines = [
        "| mode | mIoU | object pixels right | confident object labels right | object pixels confident & right |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        cells = [r.miou, r.foreground_accuracy, r.object_precision, r.foreground_recall]
        lines.append(f"| {r.mode} | " + " | ".join("—" if math.isnan(v) else f"{v:.1f}" for v in cells) + " |")
    return "\n".join(lines)
