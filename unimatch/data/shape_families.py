"""Procedural shape classes: the breadth of the foundation corpus.

ImageNet's features transfer because a thousand classes force general ones; thirteen hand-drawn shapes do
not. :func:`procedural_shapes` draws any number of shape classes from six families (irregular or
stretched polygons, stars of 3-10 points, smooth blobs, frames with a hole of the same or another shape,
sectors and arc bands, glyphs made of 2-4 bars) and keeps only those that no benchmark class matches:
the best overlap (IoU at equal area, over rotations and mirror images) with every benchmark shape stays
below :data:`MAX_BENCHMARK_IOU`. A class is its seeded parameter draw, so a seed gives the same classes
on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from skimage.measure import approximate_polygon, find_contours

from .embedded import SHAPES, Polygon

FAMILIES = ("polygon", "star", "blob", "frame", "sector", "glyph")
MAX_BENCHMARK_IOU = 0.85  # generation filter; tests/test_foundation.py re-checks at a finer rotation step
SHAPE_STREAM = 99  # second entry of the class generator's seed


def _normalise(points: Sequence[tuple[float, float]]) -> Polygon:
    """Centre on the vertex mean, scale into the unit disk."""
    array = np.asarray(points, dtype=np.float64)
    centred = array - array.mean(axis=0)
    return tuple(map(tuple, centred / np.hypot(*centred.T).max()))


def _radial(radii: Sequence[float], phase: float = 0.0) -> Polygon:
    step = 2 * math.pi / len(radii)
    return tuple((r * math.cos(phase + i * step), r * math.sin(phase + i * step)) for i, r in enumerate(radii))


def _stretch(points: Polygon, aspect: float, shear: float = 0.0) -> Polygon:
    return tuple((x + shear * y, y * aspect) for x, y in points)


def _polygon(rng: np.random.Generator) -> Polygon:
    sides = int(rng.integers(3, 10))
    radii = rng.uniform(0.6, 1.0, sides) if rng.random() < 0.6 else [1.0] * sides
    return _normalise(
        _stretch(_radial(radii, rng.uniform(0, 2 * math.pi)), rng.uniform(0.45, 1.0), rng.uniform(-0.4, 0.4))
    )


def _star(rng: np.random.Generator) -> Polygon:
    radii = [1.0, rng.uniform(0.2, 0.8)] * int(rng.integers(3, 11))
    if rng.random() < 0.4:
        radii = [r * rng.uniform(0.75, 1.0) for r in radii]
    return _normalise(_stretch(_radial(radii), rng.uniform(0.6, 1.0)))


def _blob(rng: np.random.Generator) -> Polygon:
    """A closed curve r(t) = 1 + sum_k a_k cos((k + 2) t + p_k)."""
    lobes = int(rng.integers(2, 6))
    amplitudes = rng.uniform(0.05, 0.35, lobes) / np.arange(1, lobes + 1) ** 0.5
    phases = rng.uniform(0, 2 * math.pi, lobes)
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    r = np.clip(1 + sum(a * np.cos((k + 2) * t + p) for k, (a, p) in enumerate(zip(amplitudes, phases))), 0.3, None)
    return _normalise(_stretch(tuple(zip(r * np.cos(t), r * np.sin(t))), rng.uniform(0.55, 1.0)))


def _frame(rng: np.random.Generator) -> tuple[Polygon, Polygon]:
    """An outer shape minus a scaled, shifted hole of the same shape or a polygon."""
    outer = (_polygon, _blob, _star)[int(rng.integers(3))](rng)
    ratio, shift = rng.uniform(0.35, 0.7), rng.uniform(-0.15, 0.15, 2)
    hole = outer if rng.random() < 0.6 else _polygon(rng)
    return outer, tuple((x * ratio + shift[0], y * ratio + shift[1]) for x, y in hole)


def _sector(rng: np.random.Generator) -> Polygon:
    """A pie slice (pac-man) or an arc band."""
    span = rng.uniform(0.5, 1.7) * math.pi
    arc = [(math.cos(span * i / 24), math.sin(span * i / 24)) for i in range(25)]
    if rng.random() < 0.5:
        return _normalise([(0.0, 0.0), *arc])
    inner = rng.uniform(0.4, 0.75)
    return _normalise(arc + [(inner * x, inner * y) for x, y in reversed(arc)])


def _glyph(rng: np.random.Generator) -> Polygon:
    """The outline of a union of 2-4 bars (crosses, T, L, H, E-like letters), traced from a raster."""
    canvas = Image.new("L", (128, 128), 0)
    pen = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 5))):
        angle = float(rng.choice([0.0, math.pi / 2, rng.uniform(0, math.pi)]))
        length, width = rng.uniform(0.8, 2.0), rng.uniform(0.2, 0.6)
        cx, cy = rng.uniform(-0.5, 0.5, 2)
        cos, sin = math.cos(angle), math.sin(angle)
        corners = [
            (-length / 2, -width / 2),
            (length / 2, -width / 2),
            (length / 2, width / 2),
            (-length / 2, width / 2),
        ]
        pen.polygon(
            [(64 + 28 * (cx + x * cos - y * sin), 64 + 28 * (cy + x * sin + y * cos)) for x, y in corners], fill=1
        )
    contour = max(find_contours(np.pad(np.asarray(canvas, dtype=float), 1), 0.5), key=len)
    return _normalise([(x, y) for y, x in approximate_polygon(contour, tolerance=0.8)[:-1]])


def _draw(rng: np.random.Generator, family: str) -> tuple[Polygon, ...]:
    if family == "frame":
        return _frame(rng)
    return ({"polygon": _polygon, "star": _star, "blob": _blob, "sector": _sector, "glyph": _glyph}[family](rng),)


def rasterise(outlines: tuple[Polygon, ...], angle: float = 0.0, size: int = 64, mirror: bool = False) -> np.ndarray:
    """The shape (first outline filled, the others cut as holes) rotated by ``angle``, optionally mirrored,
    scaled so that it covers 1/8 of a ``size`` x ``size`` canvas: shapes compare at equal area."""

    def draw(scale: float) -> np.ndarray:
        canvas = Image.new("L", (size, size), 0)
        pen = ImageDraw.Draw(canvas)
        cos, sin = math.cos(angle), math.sin(angle)
        for index, outline in enumerate(outlines):
            points = [(x, -y if mirror else y) for x, y in outline]
            pen.polygon(
                [(size / 2 + scale * (x * cos - y * sin), size / 2 + scale * (x * sin + y * cos)) for x, y in points],
                fill=0 if index else 1,
            )
        return np.asarray(canvas, dtype=bool)

    area = max(int(draw(size / 4).sum()), 1)
    return draw(size / 4 * math.sqrt(size * size / 8 / area))


def _poses(shape: tuple[Polygon, ...], rotations: int, size: int) -> np.ndarray:
    """(2 * rotations, size * size) rasters of ``shape``: every rotation step, plain and mirrored."""
    return np.stack([
        rasterise(shape, 2 * math.pi * step / rotations, size, mirror).ravel()
        for step in range(rotations) for mirror in (False, True)
    ])  # fmt: skip


def _best_iou(poses: np.ndarray, candidate: np.ndarray) -> float:
    """Highest IoU of one flattened raster against each of ``poses`` (rows)."""
    inter = (poses & candidate).sum(axis=1)
    union = (poses | candidate).sum(axis=1)
    return float((inter / np.maximum(union, 1)).max())


def best_overlap(
    reference: tuple[Polygon, ...], candidate: tuple[Polygon, ...], rotations: int = 24, size: int = 64
) -> float:
    """Highest IoU of ``candidate`` against ``reference`` over ``rotations`` angles and mirror images (the
    reference is posed, which gives the same set of relative poses as posing the candidate)."""
    return _best_iou(_poses(reference, rotations, size), rasterise(candidate, size=size).ravel())


@lru_cache(maxsize=4)
def _benchmark_poses(rotations: int, size: int) -> tuple[np.ndarray, ...]:
    return tuple(_poses(shape, rotations, size) for shape in SHAPES.values())


def benchmark_overlap(candidate: tuple[Polygon, ...], rotations: int = 24, size: int = 64) -> float:
    """Highest :func:`best_overlap` of ``candidate`` with any benchmark class."""
    raster = rasterise(candidate, size=size).ravel()
    return max(_best_iou(poses, raster) for poses in _benchmark_poses(rotations, size))


@lru_cache(maxsize=8)
def procedural_shapes(count: int, seed: int = 0) -> tuple[tuple[Polygon, ...], ...]:
    """``count`` shape classes (outline tuples as the benchmark's ``SHAPES`` values), families in turn,
    each unlike every benchmark class (best overlap < :data:`MAX_BENCHMARK_IOU`)."""
    if count < 1:
        raise ValueError(f"procedural_shapes: need count >= 1, got {count}")
    rng = np.random.default_rng([seed, SHAPE_STREAM])
    shapes: list[tuple[Polygon, ...]] = []
    while len(shapes) < count:
        shape = _draw(rng, FAMILIES[len(shapes) % len(FAMILIES)])
        if rasterise(shape).sum() < 50:  # degenerate (a sliver): not a shape a segmentor could learn
            continue
        if benchmark_overlap(shape) < MAX_BENCHMARK_IOU:
            shapes.append(shape)
    return tuple(shapes)
