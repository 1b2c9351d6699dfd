"""Torch datasets for labeled, unlabeled and evaluation samples (SPEC §2).

Labeled lists are not tiled here: the engine repeats the sample list to the unlabeled length.
Each dataset holds its albumentations pipelines (``weak``, ``strong``), built once; every call seeds them
from the global :mod:`random` (see :mod:`unimatch.data.transforms`). Images stay uint8 numpy arrays from
decoding to normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError
from .io import IGNORE_INDEX, read_image, read_pair
from .splits import Sample
from .transforms import (
    LABELED_PAD,
    UNLABELED_PAD,
    augment,
    check_crop_size,
    cutmix_box,
    cutout,
    mask_tensor,
    normalize,
    strong_pipeline,
    weak_pipeline,
)


def _with_masks(samples: Sequence[Sample], role: str) -> list[tuple[Path, Path, str]]:
    """(image, mask, name) of every sample; all of them must have a mask."""
    if not samples:
        raise DataError(f"no {role} samples")
    missing = [sample.name for sample in samples if sample.mask is None]
    if missing:
        raise DataError(f"{len(missing)} {role} sample(s) have no mask, e.g. {missing[0]}")
    return [(sample.image, sample.mask, sample.name) for sample in samples if sample.mask is not None]


class LabeledDataset(Dataset):
    """Weakly augmented labeled crops: ``(image float32 [3, C, C], mask int64 [C, C])``, padding 255."""

    def __init__(self, samples: Sequence[Sample], nclass: int, crop_size: int) -> None:
        self.items = _with_masks(samples, "labeled")
        self.nclass = nclass
        self.crop_size = check_crop_size(crop_size)
        self.weak = weak_pipeline(self.crop_size, LABELED_PAD)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path, _ = self.items[index]
        image, mask = read_pair(image_path, mask_path, self.nclass)
        view = augment(self.weak, image=image, mask=mask)
        return normalize(view["image"]), mask_tensor(view["mask"])


class StrongLabeledDataset(LabeledDataset):
    """The weak view of (image, mask), then the strong colour augmentations (jitter, grayscale, blur) on the
    image and, with ``cutout``, CutOut (the mask 255 inside the box): ST's pseudo-labelled crops (with
    CutOut) and AllSpark's labeled crops (without)."""

    def __init__(self, samples: Sequence[Sample], nclass: int, crop_size: int, cutout: bool = True) -> None:
        super().__init__(samples, nclass, crop_size)
        self.strong = strong_pipeline()
        self.cutout = cutout

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path, _ = self.items[index]
        image, mask = read_pair(image_path, mask_path, self.nclass)
        view = augment(self.weak, image=image, mask=mask)
        image, mask = augment(self.strong, image=view["image"])["image"], view["mask"]
        if self.cutout:
            image, mask = cutout(image, mask)
        return normalize(image), mask_tensor(mask)


class UnlabeledDataset(Dataset):
    """``(img_weak, img_strong1, img_strong2, ignore_mask, cutmix_box1, cutmix_box2)`` per unlabeled image.

    Images are float32 [3, C, C]; ``ignore_mask`` is int64 [C, C], 255 on padding and 0 elsewhere; the
    boxes are int64 [C, C] 0/1. A sample's mask, if any, is never read.
    """

    def __init__(self, samples: Sequence[Sample], crop_size: int) -> None:
        if not samples:
            raise DataError("no unlabeled samples")
        self.samples = list(samples)
        self.crop_size = check_crop_size(crop_size)
        self.weak = weak_pipeline(self.crop_size, UNLABELED_PAD)
        self.strong = strong_pipeline()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image = read_image(self.samples[index].image)
        # An all-zero mask rides along the weak view only to mark where padding went.
        view = augment(self.weak, image=image, mask=np.zeros(image.shape[:2], dtype=np.uint8))
        image, padding = view["image"], view["mask"]
        strong1, box1 = augment(self.strong, image=image)["image"], cutmix_box(self.crop_size)
        strong2, box2 = augment(self.strong, image=image)["image"], cutmix_box(self.crop_size)
        ignore_mask = torch.from_numpy(np.where(padding == UNLABELED_PAD, IGNORE_INDEX, 0).astype(np.int64))
        return normalize(image), normalize(strong1), normalize(strong2), ignore_mask, box1, box2


class EvalDataset(Dataset):
    """``(image float32 [3, H, W], mask int64 [H, W], name)`` at the original size, no augmentation."""

    def __init__(self, samples: Sequence[Sample], nclass: int) -> None:
        self.items = _with_masks(samples, "evaluation")
        self.nclass = nclass

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image_path, mask_path, name = self.items[index]
        image, mask = read_pair(image_path, mask_path, self.nclass)
        return normalize(image), mask_tensor(mask), name
