"""The embedded classification default: single objects of the embedded world at 32 x 32, six classes (disk,
square, triangle, cross, star, ring), written offline in CIFAR-10's python format (``data_batch_1..5``,
``test_batch``, ``batches.meta``) so the benchmark's own reader reads it.

Every image has one object of its class on a tinted natural-image background, with the world's class hue
prior (most objects near their class's hue, some any colour), random size, rotation and position. Each
image comes from its own integer-seeded generator: a seed gives byte-identical files on a software stack.
"""

from __future__ import annotations

import colorsys
import json
import pickle
from pathlib import Path

import numpy as np

from .embedded import CLASSES as WORLD_CLASSES
from .embedded import (
    SHAPES,
    appearance,
    class_hue,
    coverage,
    load_sources,
    place_outline,
    textured_background,
    write_into_place,
)
from .errors import DataError

CLASSES = WORLD_CLASSES[1:]  # the six object shapes; label = world label - 1
SIZE = 32
DIAMETER = (16.0, 28.0)  # pixels: the object fills half to most of the image
OFF_HUE_SHARE = 0.2  # objects whose colour ignores the class hue prior (as in the world)
HUE_SPREAD = 0.06
TRAIN_PER_CLASS, TEST_PER_CLASS = 500, 100
BATCHES = 5
VERSION = 1


def render_object(rng: np.random.Generator, sources: list[np.ndarray], label: int) -> np.ndarray:
    """One 32 x 32 uint8 RGB image of class ``label`` (0..5)."""
    size = (SIZE, SIZE)
    diameter = rng.uniform(*DIAMETER)
    centre = tuple(rng.uniform(diameter / 3, SIZE - diameter / 3, 2))
    outlines = tuple(
        place_outline(outline, rng.uniform(0, 2 * np.pi), *centre, diameter / 2) for outline in SHAPES[label + 1]
    )
    hue = rng.uniform() if rng.random() < OFF_HUE_SHARE else class_hue(label + 1) + rng.normal(0, HUE_SPREAD)
    colour = np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.3, 1.0), rng.uniform(0.35, 1.0)))
    alpha = coverage(outlines, size)[..., None]
    image = (
        textured_background(rng, sources, size) * (1 - alpha) + appearance(rng, sources, size, centre, colour) * alpha
    )
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def _subset(sources: list[np.ndarray], seed: int, subset: int, per_class: int) -> tuple[np.ndarray, list[int]]:
    labels = [index % len(CLASSES) for index in range(per_class * len(CLASSES))]
    images = [
        render_object(np.random.default_rng([seed, subset, index]), sources, label)
        for index, label in enumerate(labels)
    ]
    return np.stack(images), labels


def _write_batch(path: Path, images: np.ndarray, labels: list[int], name: str) -> None:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR rows: the R, G, B planes
    with path.open("wb") as handle:
        pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": rows}, handle, protocol=2)


def generate_embedded_classification(root: str | Path, seed: int = 0, force: bool = False) -> Path:
    """Write the dataset to ``root``; returns it. A complete copy of the same seed and version is kept as it is;
    another folder there is an error unless ``force`` (then it is replaced)."""
    root = Path(root)
    meta = {"generator": __name__, "version": VERSION, "seed": seed, "size": SIZE, "classes": list(CLASSES)}
    if (root / "meta.json").is_file() and json.loads((root / "meta.json").read_text()) == meta and not force:
        return root
    if root.exists() and any(root.iterdir()) and not force:
        raise DataError(f"{root}: exists and is not the embedded classification data; remove it or use --force")
    write_into_place(root, lambda folder: _write_dataset(folder, seed, meta))
    return root


def _write_dataset(folder: Path, seed: int, meta: dict) -> None:
    """The CIFAR-format files of the dataset with ``seed`` into ``folder``; ``meta.json`` last (a complete copy)."""
    sources = load_sources()
    train, train_labels = _subset(sources, seed, 0, TRAIN_PER_CLASS)
    for number, part in enumerate(np.array_split(np.arange(len(train)), BATCHES), 1):
        _write_batch(folder / f"data_batch_{number}", train[part], [train_labels[i] for i in part], f"batch {number}")
    test, test_labels = _subset(sources, seed, 1, TEST_PER_CLASS)
    _write_batch(folder / "test_batch", test, test_labels, "test batch")
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": [name.encode() for name in CLASSES]}, handle, protocol=2)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
