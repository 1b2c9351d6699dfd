"""The foundation corpus: the embedded world's pre-training data, disjoint from the benchmark by construction.

DINOv2 is strong because it was pre-trained on 142M images that are not Pascal; the embedded world's
encoder gets the same premise from this corpus. Its images come from the same world (the backgrounds,
textures, shading and distractors of :mod:`unimatch.data.embedded`) but show thirteen *other* shapes, at
a broader range of sizes and counts, in any colour. None of the benchmark's six classes is ever drawn,
so no benchmark image or label can occur, and every image's random stream is seeded in a namespace of
its own (``[seed, FOUNDATION_STREAM, index]``; the benchmark uses stream ids 0 and 1).

Images are rendered on the fly from their index (about 12 ms each on one core), so the corpus needs no
disk and any ``(seed, index)`` gives the same pixels on a given software stack.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .embedded import SUBSETS, Polygon, Scene, load_sources, render, star_outline
from .transforms import normalize

FOUNDATION_STREAM = 7  # second entry of every corpus image's seed; the benchmark's are SUBSETS' values
CORPUS_SIZE = 50_000
CORPUS_SEED = 0
IMAGE_SIZE = (112, 112)  # rendered at the pre-training crop size


def _polygon(points: list[tuple[float, float]]) -> Polygon:
    """Centre a polygon on its vertex mean and scale it into the unit disk."""
    cx, cy = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
    radius = max(math.hypot(x - cx, y - cy) for x, y in points)
    return tuple(((x - cx) / radius, (y - cy) / radius) for x, y in points)


def _arc(
    radius: float, start: float, end: float, steps: int, centre: tuple[float, float] = (0.0, 0.0)
) -> list[tuple[float, float]]:
    return [
        (
            centre[0] + radius * math.cos(start + (end - start) * i / steps),
            centre[1] + radius * math.sin(start + (end - start) * i / steps),
        )
        for i in range(steps + 1)
    ]


def _heart() -> Polygon:
    points = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        points.append(
            (16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
        )
    return _polygon(points)


# Thirteen shapes, none of them a benchmark class (disk, square, triangle, cross, star, ring) at any
# rotation or scale; tests/test_foundation.py checks that by rasterised overlap.
FOUNDATION_SHAPES: dict[int, tuple[Polygon, ...]] = {
    1: (star_outline([1.0] * 5),),  # pentagon
    2: (star_outline([1.0] * 6),),  # hexagon
    3: (_polygon(_arc(1.0, 0.0, math.pi, 24)),),  # semicircle
    4: (
        star_outline([1.0] * 48),
        tuple((x + 0.45, y) for x, y in star_outline([0.85] * 48)),
    ),  # crescent: disk minus shifted disk
    5: (_polygon([(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)]),),  # arrow
    6: (_polygon([(-0.6, -1), (-0.1, -1), (-0.1, 0.5), (0.7, 0.5), (0.7, 1), (-0.6, 1)]),),  # L
    7: (_polygon([(-1, -1), (1, -1), (1, -0.5), (0.25, -0.5), (0.25, 1), (-0.25, 1), (-0.25, -0.5), (-1, -0.5)]),),  # T
    8: (star_outline([1.15, 0.4] * 4),),  # four-pointed star
    9: (star_outline([1.1, 0.6] * 6),),  # six-pointed star
    10: (_heart(),),
    11: (_polygon([(-1, -0.45), (0.35, -0.45), (1, 0.45), (-0.35, 0.45)]),),  # parallelogram
    12: (star_outline([1.0] * 4), star_outline([0.6] * 4)),  # square frame (an outline, not the filled square)
    13: (_polygon([(-1, -0.8), (1, 0.8), (1, -0.8), (-1, 0.8)]),),  # bow tie
}
FOUNDATION_CLASSES = (
    "background",
    "pentagon",
    "hexagon",
    "semicircle",
    "crescent",
    "arrow",
    "ell",
    "tee",
    "four_star",
    "six_star",
    "heart",
    "parallelogram",
    "frame",
    "bowtie",
)
# Broader than the benchmark (36-72 px, 1-4 objects, class hues): more scales, more clutter, any colour.
FOUNDATION_SCENE = Scene(FOUNDATION_SHAPES, diameter=(24.0, 84.0), objects=(1, 6), distractors=(0, 2), hue_prior=False)

if FOUNDATION_STREAM in SUBSETS.values():  # pragma: no cover - a guard on the constants above
    raise AssertionError("the foundation corpus must not share a seed stream with the benchmark")


def corpus_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, FOUNDATION_STREAM, index])


class FoundationCorpus(Dataset):
    """``(image float32 [3, H, W] normalised, mask int64 [H, W])`` of corpus image ``index``, rendered on
    demand (no further augmentation: the renderer already randomises placement, rotation and scale)."""

    def __init__(self, size: int = CORPUS_SIZE, seed: int = CORPUS_SEED) -> None:
        if size < 1 or seed < 0:
            raise ValueError(f"foundation corpus: need size >= 1 and seed >= 0, got size {size}, seed {seed}")
        self.size, self.seed = size, seed

    @cached_property
    def _sources(self) -> list[np.ndarray]:  # loaded once per (worker) process
        return load_sources()

    def __len__(self) -> int:
        return self.size

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw (image uint8 (H, W, 3), mask uint8 (H, W)) of ``index``."""
        if not 0 <= index < self.size:
            raise IndexError(f"foundation corpus index {index} outside 0..{self.size - 1}")
        return render(corpus_rng(self.seed, index), self._sources, IMAGE_SIZE, FOUNDATION_SCENE)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.render(index)
        return normalize(Image.fromarray(image)), torch.from_numpy(mask.astype(np.int64))
