"""The embedded default dataset: synthetic shapes on natural-image backgrounds, generated offline.

Seven classes: background plus six object shapes. As with real classes (sky is usually blue, grass
green, cars any colour), each class has a typical hue that most of its objects scatter around while the
rest take any colour; saturation, brightness, texture and shading are random. Colour is therefore a
strong but unreliable cue and shape the reliable one. Objects vary in size, position and rotation;
a new object overlaps already drawn ones by at most ``MAX_OVERLAP`` of its area (later ones occlude,
the mask follows). Elongated ellipses of any colour are background distractors, so telling "object"
from "background texture" is not enough. Backgrounds are tinted random crops of natural images bundled
with scikit-image (no download). All randomness comes from integer-seeded numpy generators (one per
image) and pixel arithmetic is elementwise, so a seed gives byte-identical files on a given software stack.
"""

from __future__ import annotations

import colorsys
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage
from PIL import Image, ImageDraw

from .classes import palette
from .errors import DataError

GENERATOR = "unimatch.data.embedded"
VERSION = 3  # 3: class hue priors, larger objects, bounded overlap (2: shape-only classes)
CLASSES = ("background", "disk", "square", "triangle", "cross", "star", "ring")
# Bundled with scikit-image (no pooch download); shape-like images (coins, chessboard, logo...) left out.
BACKGROUND_FILES = (
    "brick.png",
    "grass.png",
    "gravel.png",
    "camera.png",
    "moon.png",
    "coffee.png",
    "rocket.jpg",
    "astronaut.png",
    "chelsea.png",
    "hubble_deep_field.jpg",
    "ihc.png",
)
SUPERSAMPLE = 4  # shapes are rasterised at 4x and box-filtered: anti-aliased edges, majority-vote labels
DIAMETER = (36.0, 72.0)  # object size in pixels: 2.5 to 5 patches of a patch-14 ViT
OBJECTS = (1, 4)  # objects per image (inclusive); fewer when no placement meets MAX_OVERLAP
DISTRACTORS = (0, 2)  # background-labelled ellipses per image (inclusive)
MAX_OVERLAP = 0.15  # most of every object stays visible, as in photos (heavy occlusion is rare)
PLACEMENT_TRIES = 20  # random placements tried per object before it is left out
HUE_SPREAD = 0.06  # std of an object's hue around its class's (1 = the whole colour wheel)
OFF_HUE_SHARE = 0.2  # objects whose hue ignores the class prior
NOISE = 3  # uniform integer pixel noise amplitude (grey levels)
SUBSETS = {"train": 0, "val": 1}  # part of each image's seed, so subsets never share a random stream
JPEG_QUALITY = 95  # natural-image backgrounds make PNG ~4x larger; JPEG keeps the dataset at ~5 MB

Polygon = tuple[tuple[float, float], ...]
Size = tuple[int, int]  # (width, height)
Sources = list[np.ndarray]  # background / texture images, uint8 RGB


def star_outline(radii: list[float]) -> Polygon:
    """A unit polygon with vertices at equal angular steps and the given radii."""
    step = 2 * math.pi / len(radii)
    return tuple((r * math.cos(i * step), r * math.sin(i * step)) for i, r in enumerate(radii))


CIRCLE = star_outline([1.0] * 48)
_ARM = 0.33  # half width of the cross's arms
# Outline of a plus sign with arms reaching radius 1.
_CROSS: Polygon = (
    (_ARM, 1),
    (_ARM, _ARM),
    (1, _ARM),
    (1, -_ARM),
    (_ARM, -_ARM),
    (_ARM, -1),
    (-_ARM, -1),
    (-_ARM, -_ARM),
    (-1, -_ARM),
    (-1, _ARM),
    (-_ARM, _ARM),
    (-_ARM, 1),
)
# Unit outlines per class, sized to similar areas; the first polygon is filled, the next ones are holes.
SHAPES: dict[int, tuple[Polygon, ...]] = {
    1: (star_outline([0.85] * 48),),  # disk
    2: (star_outline([1.0] * 4),),  # square
    3: (star_outline([1.15] * 3),),  # triangle
    4: (_CROSS,),
    5: (star_outline([1.15, 0.48] * 5),),  # five-pointed star
    6: (star_outline([0.95] * 48), star_outline([0.55] * 48)),  # ring
}


def place_outline(outline: Polygon, angle: float, cx: float, cy: float, scale: float) -> Polygon:
    cos, sin = math.cos(angle), math.sin(angle)
    return tuple((cx + scale * (x * cos - y * sin), cy + scale * (x * sin + y * cos)) for x, y in outline)


def coverage(outlines: tuple[Polygon, ...], size: Size) -> np.ndarray:
    """Fraction (H, W) of each pixel covered by the shape, from a supersampled rasterisation."""
    width, height = size
    canvas = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for index, outline in enumerate(outlines):
        draw.polygon([(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in outline], fill=0 if index else 255)
    hits = np.asarray(canvas, dtype=np.int64).reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).sum(axis=(1, 3))
    return hits / (255 * SUPERSAMPLE * SUPERSAMPLE)


def load_sources() -> Sources:
    folder = Path(skimage.__file__).parent / "data"
    return [np.asarray(Image.open(folder / name).convert("RGB")) for name in BACKGROUND_FILES]


def _crop(rng: np.random.Generator, sources: Sources, size: Size) -> np.ndarray:
    """A random crop (zoomed 1-3x, maybe flipped) of a random source, resized to ``size``: float RGB in [0, 1]."""
    source = sources[rng.integers(len(sources))]
    width, height = size
    max_zoom = min(source.shape[1] / width, source.shape[0] / height, 3.0)
    zoom = rng.uniform(min(1.0, max_zoom), max_zoom)  # below 1 only when the source is smaller than ``size``
    crop_w, crop_h = int(width * zoom), int(height * zoom)
    left, top = rng.integers(source.shape[1] - crop_w + 1), rng.integers(source.shape[0] - crop_h + 1)
    image = Image.fromarray(source[top : top + crop_h, left : left + crop_w]).resize(size, Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float64) / 255
    return array[:, ::-1] if rng.random() < 0.5 else array


def textured_background(rng: np.random.Generator, sources: Sources, size: Size) -> np.ndarray:
    tint, offset = rng.uniform(0.5, 1.2, 3), rng.uniform(-0.1, 0.1)
    return np.clip(_crop(rng, sources, size) * tint + offset, 0, 1)


def class_hue(label: int) -> float:
    """The typical hue (0..1 around the colour wheel) of object class ``label``: evenly spaced, disk red."""
    return (label - 1) / (len(CLASSES) - 1)


@dataclass(frozen=True)
class Scene:
    """What a world's images are made of: object outlines per label (1..N, 0 is background), their sizes,
    counts, and whether each class has a typical hue. The benchmark is one scene; the foundation corpus
    (:mod:`unimatch.data.foundation_corpus`) another, with its own shapes."""

    shapes: dict[int, tuple[Polygon, ...]]
    diameter: tuple[float, float] = DIAMETER
    objects: tuple[int, int] = OBJECTS
    distractors: tuple[int, int] = DISTRACTORS
    hue_prior: bool = True  # False: every object takes any hue


BENCHMARK = Scene(SHAPES)


def _colour(rng: np.random.Generator, label: int, hue_prior: bool = True) -> np.ndarray:
    """RGB in [0, 1]: hue near the class's own (a prior, like a real class's typical look), sometimes any."""
    if label == 0 or not hue_prior or rng.random() < OFF_HUE_SHARE:
        hue = rng.uniform(0.0, 1.0)
    else:
        hue = class_hue(label) + rng.normal(0.0, HUE_SPREAD)
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.3, 1.0), rng.uniform(0.35, 1.0)))


def appearance(
    rng: np.random.Generator, sources: Sources, size: Size, centre: tuple[float, float], colour: np.ndarray
) -> np.ndarray:
    """Object fill: ``colour`` modulated by a grey texture crop and a linear shading ramp."""
    contrast = rng.uniform(0.2, 0.6)
    texture = _crop(rng, sources, size)
    grey = (texture[..., 0] + texture[..., 1] + texture[..., 2]) / 3
    direction, strength = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.3)
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float64)
    ramp = np.clip(((xs - centre[0]) * math.cos(direction) + (ys - centre[1]) * math.sin(direction)) / 25, -1, 1)
    shade = (1 - contrast + contrast * grey) * (1 + strength * ramp)
    return np.clip(shade[..., None] * colour, 0, 1)


def _outlines(
    rng: np.random.Generator, scene: Scene, label: int, size: Size
) -> tuple[tuple[Polygon, ...], tuple[float, float]]:
    """A randomly sized, rotated and placed outline of class ``label`` (0: an elongated-ellipse distractor)."""
    diameter = rng.uniform(*scene.diameter)
    centre = (rng.uniform(diameter / 4, size[0] - diameter / 4), rng.uniform(diameter / 4, size[1] - diameter / 4))
    angle = rng.uniform(0, 2 * math.pi)
    if label == 0:
        aspect = rng.uniform(2.5, 4.0)
        unit: tuple[Polygon, ...] = (tuple((x, y / aspect) for x, y in CIRCLE),)
    else:
        unit = scene.shapes[label]
    return tuple(place_outline(outline, angle, *centre, diameter / 2) for outline in unit), centre


def render(
    rng: np.random.Generator, sources: Sources, size: Size, scene: Scene | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (H, W, 3), mask uint8 (H, W)) pair of ``scene`` (default: the benchmark's)."""
    scene = scene or BENCHMARK
    image = textured_background(rng, sources, size)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    count = rng.integers(scene.objects[0], scene.objects[1] + 1)
    labels = [int(rng.integers(1, len(scene.shapes) + 1)) for _ in range(count)]
    labels += [0] * int(rng.integers(scene.distractors[0], scene.distractors[1] + 1))
    covered = np.zeros(mask.shape)
    for label in rng.permutation(labels):
        for _ in range(PLACEMENT_TRIES):
            outlines, centre = _outlines(rng, scene, int(label), size)
            alpha = coverage(outlines, size)
            if (alpha * covered).sum() <= MAX_OVERLAP * alpha.sum():
                break
        else:
            continue
        covered = np.maximum(covered, alpha)
        colour = _colour(rng, int(label), scene.hue_prior)
        fill = appearance(rng, sources, size, centre, colour)
        image = image * (1 - alpha[..., None]) + fill * alpha[..., None]
        mask[alpha >= 0.5] = label
    noise = rng.integers(-NOISE, NOISE + 1, size=image.shape)
    return np.clip(np.rint(image * 255) + noise, 0, 255).astype(np.uint8), mask


README = """# Embedded shapes dataset

Synthetic semantic-segmentation data generated by `{generator}` (version {version}, seed {seed}):
{n_train} train and {n_val} val images of {width}x{height} pixels, JPEG (quality {quality}), with palette-PNG
masks holding class indices. Classes (`classes.txt`): {class_list}.

Each class has a typical hue (disk red, square yellow, triangle green, cross cyan, star blue, ring
magenta) that {typical:.0%} of its objects scatter around (std {spread:.0%} of the colour wheel); the rest
take any colour. Saturation, brightness, texture and shading are random, so shape is the reliable cue.
Objects overlap by at most {overlap:.0%} of their area (the mask follows occlusion); elongated ellipses of
any colour are background distractors.
Backgrounds are tinted random crops of images bundled with scikit-image. Regenerate with
`python -c "from unimatch.data import generate_embedded; generate_embedded('<root>', seed={seed}, force=True)"`.
"""


def dataset_metadata(
    generator: str,
    version: int,
    classes: Sequence[str],
    jpeg_quality: int,
    seed: int,
    n_train: int,
    n_val: int,
    size: Size,
) -> dict:
    """What ``metadata.json`` records of a generated dataset; a copy whose record differs is regenerated."""
    return {
        "generator": generator,
        "version": version,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "size": list(size),
        "classes": list(classes),
        "jpeg_quality": jpeg_quality,
    }


def _metadata(seed: int, n_train: int, n_val: int, size: Size) -> dict:
    return dataset_metadata(GENERATOR, VERSION, CLASSES, JPEG_QUALITY, seed, n_train, n_val, size)


def read_metadata(root: Path) -> dict | None:
    try:
        return json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, meta: dict) -> bool:
    if read_metadata(root) != meta:
        return False
    counts = {"train": meta["n_train"], "val": meta["n_val"]}
    return all(
        len(list((root / "images" / subset).glob("*.jpg"))) == count
        and len(list((root / "masks" / subset).glob("*.png"))) == count
        for subset, count in counts.items()
    )


def _check_replaceable(root: Path, force: bool) -> None:
    """Refuse to delete a directory that holds something other than an embedded dataset, unless forced."""
    if force or not root.exists():
        return
    if root.is_dir() and (not any(root.iterdir()) or (read_metadata(root) or {}).get("generator") == GENERATOR):
        return
    raise DataError(f"{root}: exists and is not an embedded dataset; pass force=True to replace it")


def _save_mask(mask: np.ndarray, path: Path) -> None:
    image = Image.fromarray(mask)
    image.putpalette(palette(256).tobytes())  # turns the L image into a palette PNG of class indices
    image.save(path, optimize=True)


def _write_dataset(folder: Path, meta: dict) -> None:
    sources, size = load_sources(), tuple(meta["size"])
    for subset, subset_id in SUBSETS.items():
        (folder / "images" / subset).mkdir(parents=True)
        (folder / "masks" / subset).mkdir(parents=True)
        for index in range(meta[f"n_{subset}"]):
            image, mask = render(np.random.default_rng([meta["seed"], subset_id, index]), sources, size)
            Image.fromarray(image).save(folder / "images" / subset / f"{index:05d}.jpg", quality=JPEG_QUALITY)
            _save_mask(mask, folder / "masks" / subset / f"{index:05d}.png")
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES), encoding="utf-8")
    readme = README.format(
        **meta,
        width=size[0],
        height=size[1],
        quality=JPEG_QUALITY,
        class_list=", ".join(CLASSES),
        typical=1 - OFF_HUE_SHARE,
        spread=HUE_SPREAD,
        overlap=MAX_OVERLAP,
    )
    (folder / "README.md").write_text(readme, encoding="utf-8")
    # Written last: its presence marks a complete dataset.
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _swap_into_place(staging: Path, root: Path) -> None:
    if not root.exists():
        staging.rename(root)
        return
    old = staging.with_name(staging.name + ".old")
    root.rename(old)
    staging.rename(root)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


def write_into_place(root: Path, write: Callable[[Path], None]) -> None:
    """``write`` a dataset into a temporary directory beside ``root``, then rename it into place: an
    interrupted run leaves nothing partial."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the dataset should not be
        write(staging)
        _swap_into_place(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def generate_embedded(
    root: str | Path,
    seed: int = 0,
    n_train: int = 400,
    n_val: int = 100,
    size: Size = (160, 120),
    force: bool = False,
) -> Path:
    """Write the embedded dataset (folder layout) to ``root`` and return it; a no-op when ``root`` already
    holds a complete dataset with the same parameters (unless ``force``). Generation happens in a temporary
    directory beside ``root`` that is renamed into place, so an interrupted run leaves nothing partial."""
    if seed < 0 or n_train < 1 or n_val < 1 or min(size) < 1:
        problem = f"seed {seed}, n_train {n_train}, n_val {n_val}, size {size}"
        raise DataError(f"generate_embedded: need seed >= 0 and positive counts and size, got {problem}")
    root = Path(root).absolute()
    meta = _metadata(seed, n_train, n_val, size)
    if not force and _is_complete(root, meta):
        return root
    _check_replaceable(root, force)
    write_into_place(root, lambda folder: _write_dataset(folder, meta))
    return root


def generate_on_first_use(
    root: str | Path, default_root: str | Path, generate: Callable[[Path], Path], hint: str
) -> None:
    """Generate a project-made dataset when ``root`` is missing, but only at its ``default_root`` (relative to
    the working directory): a missing root anywhere else is a typo or an unmounted disk, and filling it with
    synthetic data would train on the wrong data without a word. ``hint``: how to write it there on purpose."""
    root = Path(root)
    if root.exists():
        return
    if root.absolute() != Path(default_root).absolute():
        raise DataError(
            f"dataset.root={root}: not found (generated on first use only at {default_root}; to write it there: {hint})"
        )
    generate(root)


def render_world(
    seed: int, subset: str, count: int, size: Size = (160, 120), scene: Scene | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images of ``subset`` of the world with data seed ``seed`` rendered in memory, exactly as
    :func:`generate_embedded` would write them before JPEG encoding: images uint8 (N, H, W, 3) and masks
    uint8 (N, H, W)."""
    sources = load_sources()
    pairs = [
        render(np.random.default_rng([seed, SUBSETS[subset], index]), sources, size, scene) for index in range(count)
    ]
    return np.stack([image for image, _ in pairs]), np.stack([mask for _, mask in pairs])
