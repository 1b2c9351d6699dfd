"""The foundation corpus: the embedded world's pre-training data, disjoint from the benchmark by construction.

DINOv2 is strong because it was pre-trained on 142M images that are not Pascal; the embedded world's
encoder gets the same premise from this corpus. Its images come from the same world (the backgrounds,
textures, shading and distractors of :mod:`unimatch.data.embedded`) but show thirteen *other* shapes, at
a broader range of sizes and counts, in any colour. None of the benchmark's six classes is ever drawn,
so no benchmark image or label can occur, and every image's random stream is seeded in a namespace of
its own (``[seed, FOUNDATION_STREAM, index]``; the benchmark uses stream ids 0 and 1).

Breadth is a setting: ``classes=0`` draws the thirteen hand-made shapes below, ``classes=N`` that many
procedural shape classes (:mod:`unimatch.data.shape_families`, each unlike every benchmark class).
:class:`WorldPool` is the other source: unlabeled images of the benchmark's own world (its six classes
may appear, as Pascal's objects appear in DINOv2's LVD-142M) from a seed stream no benchmark image uses.

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

from .embedded import BENCHMARK, SUBSETS, Polygon, Scene, load_sources, render, star_outline
from .shape_families import procedural_shapes
from .transforms import normalize

FOUNDATION_STREAM = 7  # second entry of every corpus image's seed; the benchmark's are SUBSETS' values
WORLD_STREAM = 8  # second entry of every world-pool image's seed
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

if {FOUNDATION_STREAM, WORLD_STREAM} & set(SUBSETS.values()):  # pragma: no cover - a guard on the constants above
    raise AssertionError("the foundation corpus and world pool must not share a seed stream with the benchmark")


def corpus_scene(classes: int) -> Scene:
    """The hand-made thirteen shapes (``classes`` 0) or ``classes`` procedural ones, in the corpus's broad scene."""
    if classes == 0:
        return FOUNDATION_SCENE
    shapes = {label: shape for label, shape in enumerate(procedural_shapes(classes), start=1)}
    return Scene(shapes, diameter=FOUNDATION_SCENE.diameter, objects=FOUNDATION_SCENE.objects,
                 distractors=FOUNDATION_SCENE.distractors, hue_prior=False)  # fmt: skip


def class_names(classes: int) -> list[str]:
    """Label names of :func:`corpus_scene` (background first)."""
    return (
        list(FOUNDATION_CLASSES) if classes == 0 else ["background", *(f"shape_{i:03d}" for i in range(1, classes + 1))]
    )


class FoundationCorpus(Dataset):
    """``(image float32 [3, H, W] normalised, mask int64 [H, W])`` of corpus image ``index``, rendered on
    demand (no further augmentation: the renderer already randomises placement, rotation and scale)."""

    stream = FOUNDATION_STREAM

    def __init__(self, size: int = CORPUS_SIZE, seed: int = CORPUS_SEED, classes: int = 0) -> None:
        if size < 1 or seed < 0 or classes < 0:
            problem = f"size {size}, seed {seed}, classes {classes}"
            raise ValueError(f"foundation corpus: need size >= 1, seed >= 0 and classes >= 0, got {problem}")
        self.size, self.seed, self.classes = size, seed, classes

    @cached_property
    def _sources(self) -> list[np.ndarray]:  # loaded once per (worker) process
        return load_sources()

    @cached_property
    def scene(self) -> Scene:
        return corpus_scene(self.classes)

    def __len__(self) -> int:
        return self.size

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw (image uint8 (H, W, 3), mask uint8 (H, W)) of ``index``."""
        if not 0 <= index < self.size:
            raise IndexError(f"foundation corpus index {index} outside 0..{self.size - 1}")
        rng = np.random.default_rng([self.seed, self.stream, index])
        image, mask = render(rng, self._sources, IMAGE_SIZE, self.scene)
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.render(index)
        return normalize(Image.fromarray(image)), torch.from_numpy(mask.astype(np.int64))


class WorldPool(FoundationCorpus):
    """Unlabeled images of the benchmark's world (its scene, class hues included) for self-distillation,
    seeded ``[seed, WORLD_STREAM, index]``: never a benchmark image. The masks it returns are never read by
    the self-distillation route; they stay available for diagnostics."""

    stream = WORLD_STREAM

    @cached_property
    def scene(self) -> Scene:
        return BENCHMARK
