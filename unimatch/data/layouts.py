"""Listing the samples of a dataset from its standard on-disk layout (SPEC §1).

- pascal: ``JPEGImages/ID.jpg`` + ``SegmentationClass/ID.png``, IDs from
  ``ImageSets/Segmentation/{train,val}.txt`` (train without train.txt: every mask whose ID is not in val.txt).
- cityscapes: ``leftImg8bit/{train,val}/CITY/X_leftImg8bit.png``
  + ``gtFine/{train,val}/CITY/X_gtFine_labelTrainIds.png``.
- ade20k: ``images/{training,validation}/X.jpg`` + ``annotations/{training,validation}/X.png``.
- coco: ``{train2017,val2017}/X.jpg`` + ``masks/{train2017,val2017}/X.png`` (the UniMatch split-file layout).
- folder, embedded: ``images/{train,val}/**/X.{png,jpg,...}`` + ``masks/{train,val}/**/X.png``, ``classes.txt``.
- Change detection (``levir-cd``, ``whu-cd``, ``change`` for your own, ``embedded-cd``): ``A/NAME``, ``B/NAME``,
  ``label/NAME`` (0/255 PNG), pairs listed by bare name in ``train.txt`` / ``val.txt`` (:mod:`.change`).

Train images without a mask are kept with ``mask=None`` (unlabeled-only); every val image needs a mask.
Pascal's extra SBD unlabeled images are not discoverable from the layout: give them as a split file
(``dataset.unlabeled_split`` or ``dataset.extra_unlabeled``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from .change import image_b, list_pairs, read_names_split, write_names_split
from .errors import DataError
from .splits import Sample, raise_missing, read_split, write_split

SUBSETS = ("train", "val")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _directory(path: Path) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: expected directory not found")
    return path


def _images(folder: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in _directory(folder).rglob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _samples(root: Path, pairs: Iterable[tuple[Path, Path]], subset: str) -> list[Sample]:
    """Samples from (image, expected mask) pairs; a missing mask is an error in val and None in train."""
    samples, missing = [], []
    for image, mask in pairs:
        if not image.is_file():
            missing.append(f"{image}: image not found")
        elif subset == "val" and not mask.is_file():
            missing.append(f"{mask}: mask of validation image {image} not found")
        else:
            samples.append(Sample(image, mask if mask.is_file() else None, image.relative_to(root).as_posix()))
    raise_missing(missing)
    if not samples:
        raise DataError(f"{root}: no {subset} images found")
    return samples


def _ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: Pascal image-set file not found")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pascal(root: Path, subset: str) -> list[Sample]:
    sets = root / "ImageSets" / "Segmentation"
    if subset == "val" or (sets / "train.txt").is_file():
        ids = _ids(sets / f"{subset}.txt")
    else:
        val = set(_ids(sets / "val.txt"))
        ids = [p.stem for p in sorted(_directory(root / "SegmentationClass").glob("*.png")) if p.stem not in val]
    pairs = ((root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids)
    return _samples(root, pairs, subset)


def _cityscapes(root: Path, subset: str) -> list[Sample]:
    images = _images(root / "leftImg8bit" / subset, "*_leftImg8bit.png")
    masks = root / "gtFine" / subset

    def mask_of(image: Path) -> Path:
        stem = image.name.removesuffix("_leftImg8bit.png")
        return masks / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"

    return _samples(root, ((image, mask_of(image)) for image in images), subset)


def _mirrored(root: Path, image_dir: Path, mask_dir: Path, subset: str) -> list[Sample]:
    """Masks at the image's path relative to ``image_dir``, under ``mask_dir``, with a .png suffix."""
    pairs = ((image, (mask_dir / image.relative_to(image_dir)).with_suffix(".png")) for image in _images(image_dir))
    return _samples(root, pairs, subset)


def _ade20k(root: Path, subset: str) -> list[Sample]:
    part = {"train": "training", "val": "validation"}[subset]
    return _mirrored(root, root / "images" / part, root / "annotations" / part, subset)


def _coco(root: Path, subset: str) -> list[Sample]:
    part = f"{subset}2017"
    return _mirrored(root, root / part, root / "masks" / part, subset)


def _folder(root: Path, subset: str) -> list[Sample]:
    return _mirrored(root, root / "images" / subset, root / "masks" / subset, subset)


_LAYOUTS: dict[str, Callable[[Path, str], list[Sample]]] = {
    "pascal": _pascal,
    "cityscapes": _cityscapes,
    "ade20k": _ade20k,
    "coco": _coco,
    "folder": _folder,
    "embedded": _folder,
    "levir-cd": list_pairs,
    "whu-cd": list_pairs,
    "change": list_pairs,
    "embedded-cd": list_pairs,
}
# The task of each layout that is not plain semantic segmentation (unimatch.tasks).
_TASKS = {
    "levir-cd": "change_detection",
    "whu-cd": "change_detection",
    "change": "change_detection",
    "embedded-cd": "change_detection",
    # image classification: arrays in their benchmark formats, read by unimatch/data/classification.py
    "cifar10": "classification",
    "svhn": "classification",
    "stl10": "classification",
    "imagenet-folder": "classification",
    "embedded-cls": "classification",
}


def layout_task(name: str) -> str:
    """The task (``unimatch.tasks``) of dataset layout ``name``: segmentation unless it declares another."""
    if name not in _LAYOUTS and name not in _TASKS:
        raise DataError(f"dataset.name: unknown dataset '{name}' (known: {', '.join({**_LAYOUTS, **_TASKS})})")
    return _TASKS.get(name, "segmentation")


def list_dataset(name: str, root: str | Path, subset: str) -> list[Sample]:
    """All samples of ``subset`` ('train' or 'val') of dataset ``name`` stored under ``root``, sorted by name."""
    if name not in _LAYOUTS:
        raise DataError(f"dataset.name: unknown dataset '{name}' (known: {', '.join(_LAYOUTS)})")
    if subset not in SUBSETS:
        raise DataError(f"unknown subset '{subset}' (known: {', '.join(SUBSETS)})")
    root = _directory(Path(root).absolute())
    return sorted(_LAYOUTS[name](root, subset), key=lambda sample: sample.name)


def list_image_folder(folder: str | Path) -> list[Sample]:
    """Every image under ``folder`` (recursive, sorted) as a mask-less sample named by its relative path."""
    folder = Path(folder).absolute()
    samples = [Sample(image, None, image.relative_to(folder).as_posix()) for image in _images(folder)]
    if not samples:
        raise DataError(f"{folder}: no images found")
    return samples


class SplitFormat:
    """How split files read and write: ``IMAGE MASK`` paths, or bare pair names (``pairs``: change detection)."""

    def __init__(self, pairs: bool) -> None:
        self.pairs = pairs

    @classmethod
    def of(cls, dataset: str) -> SplitFormat:
        return cls(layout_task(dataset) == "change_detection")

    def read(
        self, path: str | Path, root: str | Path, require_masks: bool = True, allow_empty: bool = False
    ) -> list[Sample]:
        reader = read_names_split if self.pairs else read_split
        return reader(path, root, require_masks=require_masks, allow_empty=allow_empty)

    def write(self, path: str | Path, samples: list[Sample], root: str | Path, allow_empty: bool = False) -> None:
        (write_names_split if self.pairs else write_split)(path, samples, root, allow_empty)

    def images(self, sample: Sample) -> tuple[Path, ...]:
        """The image files of a sample: the image, or a pair's A and B."""
        return (sample.image, image_b(sample)) if self.pairs else (sample.image,)
