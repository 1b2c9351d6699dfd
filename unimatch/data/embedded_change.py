"""The embedded change-detection dataset: bi-temporal pairs of synthetic aerial-like scenes, generated offline.

Each pair shows one scene twice. Date A holds "buildings" (rectangles, L-shaped blocks, round tanks) on a
tinted natural texture; at date B some were demolished, some rebuilt as a different building on the same
spot, and new ones appear (a share of pairs has no change at all). What B also differs in, and what must
NOT count as change: illumination (a global gain and offset), a colour cast per channel, sensor noise and a
misregistration of up to ``MISREGISTRATION`` pixels. The label marks the footprints of demolished, rebuilt
and new buildings: 255 changed, 0 unchanged, in the A/B/label layout of LEVIR-CD with bare-name split files
(``train.txt``, ``val.txt``). All randomness comes from integer-seeded numpy generators, one per pair, so a
seed gives byte-identical files on a given software stack.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .change import CHANGED, CLASSES, FOLDERS
from .embedded import (
    CIRCLE,
    SUBSETS,
    Polygon,
    Size,
    Sources,
    appearance,
    coverage,
    dataset_metadata,
    load_sources,
    place_outline,
    read_metadata,
    textured_background,
    write_into_place,
)
from .errors import DataError

GENERATOR = "unimatch.data.embedded_change"
VERSION = 1
JPEG_QUALITY = 90  # a few MB for 500 pairs; labels stay lossless PNG
SIZE = (128, 128)  # LEVIR-CD tiles are 256x256 at 0.5 m; half that keeps the CPU benchmark fast
BUILDINGS = (3, 8)  # per scene at date A (inclusive)
DIAMETER = (14.0, 30.0)  # building size in pixels: 1-2 patches of a patch-14 ViT
NO_CHANGE_SHARE = 0.3  # pairs where nothing changes (only the nuisances)
DEMOLISHED = 0.15  # chance that a building of date A is gone at date B
REBUILT = 0.1  # chance that it is replaced by a different building on the same spot
NEW_BUILDINGS = (0, 3)  # buildings added at date B in a changing pair (inclusive)
GAIN, OFFSET, CAST = (0.75, 1.25), (-0.08, 0.08), (0.9, 1.1)  # illumination and colour cast of date B
MISREGISTRATION = 2  # pixels, in x and y
NOISE = 4  # uniform integer pixel noise amplitude, drawn independently for A and B
MAX_OVERLAP = 0.0  # buildings never overlap: a footprint is all one building's
PLACEMENT_TRIES = 20

_L_BLOCK: Polygon = ((-1, -1), (1, -1), (1, -0.1), (0.1, -0.1), (0.1, 1), (-1, 1))


def _rectangle(aspect: float) -> Polygon:
    return ((-1, -aspect), (1, -aspect), (1, aspect), (-1, aspect))


@dataclass(frozen=True)
class Building:
    outline: Polygon
    centre: tuple[float, float]
    fill: np.ndarray  # (H, W, 3) float appearance over the whole canvas


def _building(
    rng: np.random.Generator, sources: Sources, canvas: Size, centre: tuple[float, float] | None = None
) -> Building:
    """A randomly shaped, sized, rotated building with its own roof colour and texture."""
    diameter = rng.uniform(*DIAMETER)
    if centre is None:
        centre = (
            rng.uniform(diameter / 2, canvas[0] - diameter / 2),
            rng.uniform(diameter / 2, canvas[1] - diameter / 2),
        )
    kind = rng.integers(3)
    unit = (_rectangle(rng.uniform(0.4, 1.0)), _L_BLOCK, CIRCLE)[kind]
    outline = place_outline(unit, rng.uniform(0, 2 * math.pi), *centre, diameter / 2)
    roof = np.array([rng.uniform(0.25, 0.95) for _ in range(3)])  # roofs of any colour: colour is no cue
    return Building(outline, centre, appearance(rng, sources, canvas, centre, roof))


def _place_buildings(
    rng: np.random.Generator, sources: Sources, canvas: Size, count: int, taken: np.ndarray
) -> list[tuple[Building, np.ndarray]]:
    """Up to ``count`` buildings that overlap nothing in ``taken`` (updated in place) nor each other."""
    placed = []
    for _ in range(count):
        for _ in range(PLACEMENT_TRIES):
            building = _building(rng, sources, canvas)
            alpha = coverage((building.outline,), canvas)
            if (alpha * taken).sum() <= MAX_OVERLAP * alpha.sum():
                break
        else:
            continue
        taken[:] = np.maximum(taken, alpha)
        placed.append((building, alpha))
    return placed


def _compose(ground: np.ndarray, buildings: list[tuple[Building, np.ndarray]]) -> np.ndarray:
    image = ground
    for building, alpha in buildings:
        image = image * (1 - alpha[..., None]) + building.fill * alpha[..., None]
    return image


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    noise = rng.integers(-NOISE, NOISE + 1, size=image.shape)
    return np.clip(np.rint(image * 255) + noise, 0, 255).astype(np.uint8)


def render_pair(
    rng: np.random.Generator, sources: Sources, size: Size = SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (A uint8 (H, W, 3), B uint8 (H, W, 3), label uint8 (H, W) 0/255) triple."""
    margin = MISREGISTRATION
    canvas = (size[0] + 2 * margin, size[1] + 2 * margin)
    ground = textured_background(rng, sources, canvas)
    taken = np.zeros((canvas[1], canvas[0]))
    before = _place_buildings(rng, sources, canvas, int(rng.integers(BUILDINGS[0], BUILDINGS[1] + 1)), taken)
    after, changed = [], np.zeros_like(taken)
    changing = rng.random() >= NO_CHANGE_SHARE
    for building, alpha in before:
        fate = rng.random() if changing else 1.0
        if fate < DEMOLISHED:
            changed = np.maximum(changed, alpha)
        elif fate < DEMOLISHED + REBUILT:
            new = _building(rng, sources, canvas, building.centre)
            new_alpha = coverage((new.outline,), canvas)
            after.append((new, new_alpha))
            changed = np.maximum(changed, np.maximum(alpha, new_alpha))
        else:
            after.append((building, alpha))
    if changing:
        for building, alpha in _place_buildings(
            rng, sources, canvas, int(rng.integers(NEW_BUILDINGS[0], NEW_BUILDINGS[1] + 1)), taken
        ):
            after.append((building, alpha))
            changed = np.maximum(changed, alpha)
    first = _compose(ground, before)
    gain, offset, cast = rng.uniform(*GAIN), rng.uniform(*OFFSET), rng.uniform(*CAST, size=3)
    second = np.clip(_compose(ground, after) * gain * cast + offset, 0, 1)
    dx, dy = (int(v) for v in rng.integers(-MISREGISTRATION, MISREGISTRATION + 1, size=2))
    window = (slice(margin, margin + size[1]), slice(margin, margin + size[0]))
    shifted = (slice(margin + dy, margin + dy + size[1]), slice(margin + dx, margin + dx + size[0]))
    label = np.where(changed[window] >= 0.5, CHANGED, 0).astype(np.uint8)
    return _finish(rng, first[window]), _finish(rng, second[shifted]), label


README = """# Embedded change-detection dataset

Synthetic bi-temporal pairs generated by `{generator}` (version {version}, seed {seed}): {n_train} train and
{n_val} val pairs of {width}x{height} pixels in the LEVIR-CD layout: `A/NAME.jpg` (date A), `B/NAME.jpg`
(date B), `label/NAME.png` (0 unchanged, 255 changed; JPEG keeps the images at a few MB, labels stay
lossless), bare-name split files `train.txt` and `val.txt`.

Buildings (rectangles, L-shaped blocks, round tanks; roofs of any colour) are demolished, rebuilt as a
different building, or appear between the dates; {no_change:.0%} of the pairs have no change. Date B also
differs by illumination (gain, offset), a colour cast, noise and a misregistration of up to {shift} px,
none of which is change. Regenerate with `unimatch make-data`.
"""


def _metadata(seed: int, n_train: int, n_val: int, size: Size) -> dict:
    return dataset_metadata(GENERATOR, VERSION, CLASSES, JPEG_QUALITY, seed, n_train, n_val, size)


def _is_complete(root: Path, meta: dict) -> bool:
    total = meta["n_train"] + meta["n_val"]
    return read_metadata(root) == meta and all(len(list((root / folder).iterdir())) == total for folder in FOLDERS)


def _write_dataset(folder: Path, meta: dict) -> None:
    sources, size = load_sources(), tuple(meta["size"])
    for name in FOLDERS:
        (folder / name).mkdir(parents=True)
    for subset, subset_id in SUBSETS.items():
        names = []
        for index in range(meta[f"n_{subset}"]):
            first, second, label = render_pair(
                np.random.default_rng([meta["seed"], subset_id, index, 1]), sources, size
            )
            stem = f"{subset}_{index:05d}"
            Image.fromarray(first).save(folder / "A" / f"{stem}.jpg", quality=JPEG_QUALITY)
            Image.fromarray(second).save(folder / "B" / f"{stem}.jpg", quality=JPEG_QUALITY)
            Image.fromarray(label).save(folder / "label" / f"{stem}.png", optimize=True)
            names.append(f"{stem}.jpg")
        (folder / f"{subset}.txt").write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES), encoding="utf-8")
    readme = README.format(**meta, width=size[0], height=size[1], no_change=NO_CHANGE_SHARE, shift=MISREGISTRATION)
    (folder / "README.md").write_text(readme, encoding="utf-8")
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")  # last: marks completion


def generate_embedded_change(
    root: str | Path, seed: int = 0, n_train: int = 400, n_val: int = 100, size: Size = SIZE, force: bool = False
) -> Path:
    """Write the embedded change-detection dataset to ``root`` and return it; a no-op when ``root`` holds a
    complete copy with the same parameters (unless ``force``). Written beside ``root`` and renamed into
    place, so an interrupted run leaves nothing partial; a directory that is not such a dataset is refused."""
    if seed < 0 or n_train < 1 or n_val < 1 or min(size) < 1:
        raise DataError(
            f"generate_embedded_change: need seed >= 0 and positive counts and size, got seed {seed}, "
            f"n_train {n_train}, n_val {n_val}, size {size}"
        )
    root = Path(root).absolute()
    meta = _metadata(seed, n_train, n_val, size)
    if not force and root.is_dir() and _is_complete(root, meta):
        return root
    if (
        not force
        and root.exists()
        and not (
            root.is_dir() and (not any(root.iterdir()) or (read_metadata(root) or {}).get("generator") == GENERATOR)
        )
    ):
        raise DataError(
            f"{root}: exists and is not an embedded change-detection dataset; pass force=True to replace it"
        )
    write_into_place(root, lambda folder: _write_dataset(folder, meta))
    return root
