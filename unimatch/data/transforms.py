"""UniMatch augmentations (SPEC §2), following the reference code's PIL pipeline.

Every random draw goes through ``rng``: by default the global :mod:`random` module, which a torch
DataLoader seeds in each worker (``base_seed + worker_id``), so seeding torch in the main process
(and :mod:`random` when ``num_workers=0``) makes the augmentations reproducible.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps

from ..config import PATCH_SIZE
from .errors import DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
LABELED_PAD = 255  # padding of labeled masks: ignored by the loss like any 255 pixel
UNLABELED_PAD = 254  # padding of unlabeled crops, told apart from real ignore and turned into ignore_mask

Pair = tuple[Image.Image, Image.Image]  # an image and its mask


class Rng(Protocol):
    """What the augmentations draw from: :mod:`random` itself or a :class:`random.Random`."""

    def random(self) -> float: ...
    def uniform(self, a: float, b: float) -> float: ...
    def randint(self, a: int, b: int) -> int: ...
    def shuffle(self, x: list) -> None: ...


def check_crop_size(crop_size: int) -> int:
    if crop_size <= 0 or crop_size % PATCH_SIZE:
        raise DataError(f"dataset.crop_size: {crop_size} is not a positive multiple of the patch size {PATCH_SIZE}")
    return crop_size


def rescale(image: Image.Image, mask: Image.Image, rng: Rng, ratio: tuple[float, float] = (0.5, 2.0)) -> Pair:
    """Resize so the long side is a random integer in [int(ratio[0]*long), int(ratio[1]*long)], keeping the aspect."""
    width, height = image.size
    long_side = max(width, height)
    target = rng.randint(int(long_side * ratio[0]), int(long_side * ratio[1]))
    size = (target, max(1, int(height * target / width + 0.5)))
    if height > width:
        size = (max(1, int(width * target / height + 0.5)), target)
    return image.resize(size, Image.Resampling.BILINEAR), mask.resize(size, Image.Resampling.NEAREST)


def pad_and_crop(image: Image.Image, mask: Image.Image, crop: int, fill: int, rng: Rng) -> Pair:
    """Pad right/bottom up to ``crop`` (image 0, mask ``fill``), then take a random crop x crop window.
    A crop larger than the image is therefore always valid: the rest is padding."""
    width, height = image.size
    border = (0, 0, max(crop - width, 0), max(crop - height, 0))
    image, mask = ImageOps.expand(image, border=border, fill=0), ImageOps.expand(mask, border=border, fill=fill)
    width, height = image.size
    left, top = rng.randint(0, width - crop), rng.randint(0, height - crop)
    box = (left, top, left + crop, top + crop)
    return image.crop(box), mask.crop(box)


def hflip(image: Image.Image, mask: Image.Image, rng: Rng, p: float = 0.5) -> Pair:
    if rng.random() < p:
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image, mask


def weak(image: Image.Image, mask: Image.Image, crop: int, fill: int, rng: Rng = random) -> Pair:
    """The weak view: rescale x0.5..2, pad (mask ``fill``), random crop, horizontal flip."""
    image, mask = rescale(image, mask, rng)
    image, mask = pad_and_crop(image, mask, crop, fill, rng)
    return hflip(image, mask, rng)


def color_jitter(
    image: Image.Image, rng: Rng, strength: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.25)
) -> Image.Image:
    """torchvision's ColorJitter(brightness, contrast, saturation, hue): random factors, random order."""
    brightness, contrast, saturation, hue = strength
    operations = [
        (TF.adjust_brightness, rng.uniform(1 - brightness, 1 + brightness)),
        (TF.adjust_contrast, rng.uniform(1 - contrast, 1 + contrast)),
        (TF.adjust_saturation, rng.uniform(1 - saturation, 1 + saturation)),
        (TF.adjust_hue, rng.uniform(-hue, hue)),
    ]
    rng.shuffle(operations)
    for operation, factor in operations:
        image = operation(image, factor)
    return image


def strong(image: Image.Image, rng: Rng = random) -> Image.Image:
    """A strong view of a weak crop: colour jitter p=0.8, grayscale p=0.2, Gaussian blur sigma U(0.1, 2) p=0.5."""
    if rng.random() < 0.8:
        image = color_jitter(image, rng)
    if rng.random() < 0.2:
        image = image.convert("L").convert("RGB")
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    return image


def cutmix_box(
    size: int,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
    rng: Rng = random,
    max_tries: int = 10_000,
) -> torch.Tensor:
    """A (size, size) int64 0/1 mask: with probability ``p`` one box of area U(area)*size^2 and aspect ratio
    U(ratio), placed uniformly and redrawn (ratio and position, as in the reference) until fully inside."""
    box = torch.zeros(size, size, dtype=torch.int64)
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"cutmix area fractions must satisfy 0 < min <= max <= 1, got {area}")
    if rng.random() >= p:
        return box
    target = rng.uniform(*area) * size * size
    for _ in range(max_tries):
        aspect = rng.uniform(*ratio)
        width, height = int(math.sqrt(target / aspect)), int(math.sqrt(target * aspect))
        left, top = rng.randint(0, size - 1), rng.randint(0, size - 1)
        if left + width <= size and top + height <= size:
            box[top : top + height, left : left + width] = 1
            return box
    raise ValueError(f"no cutmix box of area {area} and ratio {ratio} fits a {size}x{size} crop")


def normalize(image: Image.Image) -> torch.Tensor:
    """ImageNet normalisation of an RGB image into a float32 (3, H, W) tensor."""
    array = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def mask_tensor(mask: Image.Image | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(mask, dtype=np.int64))
