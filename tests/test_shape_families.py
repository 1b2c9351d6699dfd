"""The procedural shape classes of the foundation corpus: many, deterministic, varied, and none of them a
benchmark class at any rotation or mirror image (checked more finely than the generator's own filter)."""

from __future__ import annotations

import math

import numpy as np

from unimatch.data.embedded import SHAPES
from unimatch.data.shape_families import (
    MAX_BENCHMARK_IOU,
    benchmark_overlap,
    best_overlap,
    procedural_shapes,
    rasterise,
)

COUNT = 300  # the shipped recipe's class count (configs/foundation/embedded-tiny.yaml)


def test_no_procedural_class_is_a_benchmark_class() -> None:
    """Each benchmark class matches itself rotated (IoU ~1); every procedural class stays below 0.95 (the
    hand-made corpus's bound) against each benchmark class at 72 rotations and mirror images."""
    turn = 7 * 2 * math.pi / 72  # on the search grid: the match is exact up to rasterisation
    for shape in SHAPES.values():
        turned = tuple(tuple((x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn)) for x, y in o) for o in shape)
        assert best_overlap(shape, turned, rotations=72, size=96) > 0.97
    shapes = procedural_shapes(COUNT)
    worst = max(benchmark_overlap(shape, rotations=72, size=96) for shape in shapes)
    assert worst < 0.95, f"a procedural class overlaps a benchmark class with IoU {worst:.3f}"


def test_classes_are_deterministic_distinct_and_from_every_family() -> None:
    first, again = procedural_shapes(30), procedural_shapes.__wrapped__(30)
    assert first == again
    rasters = [rasterise(shape, size=48) for shape in first]
    assert all(raster.sum() > 0 for raster in rasters)
    # Distinct classes: no two identical silhouettes (at rotation 0).
    assert len({raster.tobytes() for raster in rasters}) == len(rasters)
    holes = sum(len(shape) > 1 for shape in first)
    assert holes == 5  # every sixth class is a frame (a shape with a hole)


def test_the_generation_filter_rejects_a_benchmark_lookalike() -> None:
    """A slightly irregular disk is what the polygon and blob families can produce; the filter's bound
    catches it while a crescent-like sector passes."""
    wobbly_disk = (tuple((0.85 * (1 + 0.02 * math.sin(5 * t)) * math.cos(t), 0.85 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)),)
    assert best_overlap(SHAPES[1], wobbly_disk) >= MAX_BENCHMARK_IOU
    pacman = ((0.0, 0.0), *((math.cos(1.5 * math.pi * i / 24), math.sin(1.5 * math.pi * i / 24)) for i in range(25)))
    assert best_overlap(SHAPES[1], (tuple(pacman),)) < MAX_BENCHMARK_IOU
