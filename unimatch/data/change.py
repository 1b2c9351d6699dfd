"""Bi-temporal change detection data (SPEC §10): the A/B/label layout, bare-name split files, 0/255 change
masks, and the paired augmentations.

On disk: ``ROOT/A/NAME``, ``ROOT/B/NAME``, ``ROOT/label/NAME`` (the same file name in all three, as in the
LEVIR-CD and WHU-CD releases, whose images are PNG; a label is always a PNG, so JPEG pairs have
``label/STEM.png``); split files list one bare file name per line. A :class:`Sample` of a pair
holds A as its image, the label as its mask and the bare name; B sits beside A (:func:`image_b`).
A training pair is one 6-channel tensor (A's three normalised channels, then B's), so CutMix boxes,
channel dropout and evaluation treat A and B as one input; the siamese segmentor splits it again.

Augmentations (the released code): the weak view's geometry (rescale 0.8-1.2, pad, crop, flip) is drawn
once and applied to A, B and the mask; the strong views' colour (jitter, blur; no grayscale) is drawn
independently for A and for B.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..utils.atomic import write_text_atomic
from .check import DataCheck, image_header, run_checks
from .errors import DataError
from .io import DECODE_ERRORS, IGNORE_INDEX, MASK_MODES, read_image
from .splits import Sample, read_split_text
from .transforms import (
    LABELED_PAD,
    UNLABELED_PAD,
    augment,
    check_crop_size,
    cutmix_box,
    mask_tensor,
    normalize,
    strong_pipeline,
    weak_pipeline,
)

FOLDERS = ("A", "B", "label")
CHANGED = 255  # a changed pixel in the label PNGs (unchanged: 0)
RESCALE_RATIO = (0.8, 1.2)  # the released code's change-detection rescale (not 0.5-2.0)
CLASSES = ("unchanged", "changed")


# ------------------------------------------------------------------------------------------ files


def image_b(sample: Sample) -> Path:
    """The second-date image of a pair: ``ROOT/B/NAME`` beside ``ROOT/A/NAME``."""
    return sample.image.parent.parent / "B" / sample.image.name


def pair_sample(root: Path, name: str, with_mask: bool = True) -> Sample:
    """The sample of pair ``name``; its mask is None when ``with_mask`` is False and no label file exists."""
    mask = (root / "label" / name).with_suffix(".png")
    return Sample(root / "A" / name, mask if with_mask or mask.is_file() else None, name)


def _check_name(name: str, where: str) -> None:
    if "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(f"{where}: expected a bare file name (the A/B/label layout), got '{name}'")


def read_names_split(
    path: str | Path, root: str | Path, require_masks: bool = True, check_files: bool = True, allow_empty: bool = False
) -> list[Sample]:
    """The pairs listed in a bare-name split file (LEVIR-CD / WHU-CD format). ``require_masks``: every pair
    needs its label file; otherwise a missing label gives a mask-less (unlabeled) pair."""
    path, root = Path(path), Path(root).absolute()
    samples, first_line = [], {}
    for number, line in enumerate(read_split_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where, fields = f"{path}:{number}", line.split()
        if len(fields) != 1:
            raise DataError(f"{where}: expected one bare file name per line, got {len(fields)} fields")
        name = fields[0]
        _check_name(name, where)
        if name in first_line:
            raise DataError(f"{where}: '{name}' is already listed on line {first_line[name]}")
        first_line[name] = number
        sample = pair_sample(root, name, with_mask=require_masks or not check_files)
        if check_files:
            for file in (sample.image, image_b(sample), sample.mask if require_masks else None):
                if file is not None and not file.is_file():
                    raise DataError(f"{where}: file not found: {file}")
        samples.append(sample)
    if not samples and not allow_empty:
        raise DataError(f"{path}: empty split (no samples)")
    return samples


def write_names_split(path: str | Path, samples: Sequence[Sample], root: str | Path, allow_empty: bool = False) -> None:
    """Write the pairs' bare names, one per line, atomically (an unchanged file is not rewritten)."""
    if not samples and not allow_empty:
        raise DataError(f"{path}: refusing to write an empty split")
    for sample in samples:
        _check_name(sample.name, str(path))
        if any(char.isspace() for char in sample.name):
            raise DataError(f"{path}: whitespace in the name '{sample.name}' cannot be written to a split file")
    write_text_atomic(path, "".join(f"{sample.name}\n" for sample in samples))


def list_pairs(root: Path, subset: str) -> list[Sample]:
    """The pairs of ``subset``: the bare names in ``ROOT/<subset>.txt`` (train pairs may lack a label)."""
    return read_names_split(root / f"{subset}.txt", root, require_masks=subset == "val")


def read_change_mask(path: str | Path) -> np.ndarray:
    """A change label PNG as (H, W) uint8 {0, 1}: single-channel, 0 unchanged and 255 changed."""
    try:
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except DECODE_ERRORS as error:
        raise DataError(f"{path}: cannot read label ({type(error).__name__}: {error})") from None
    if image.mode not in MASK_MODES:
        raise DataError(
            f"{path}: label has mode {image.mode}; expected a single-channel PNG of 0 (unchanged) and 255 (changed)"
        )
    values = np.asarray(image)
    bad = np.unique(values[(values != 0) & (values != CHANGED)])
    if bad.size:
        raise DataError(
            f"{path}: label values {', '.join(str(v) for v in bad[:10])} are neither 0 (unchanged) nor 255 (changed)"
        )
    return (values == CHANGED).astype(np.uint8)


def read_change_pair(sample: Sample, with_mask: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A, B (uint8 RGB) and, when asked and listed, the {0, 1} change mask, checked to share one size."""
    first, second = read_image(sample.image), read_image(image_b(sample))
    mask = read_change_mask(sample.mask) if with_mask and sample.mask is not None else None
    sizes = {sample.image: first.shape[:2], image_b(sample): second.shape[:2]}
    if mask is not None:
        sizes[sample.mask] = mask.shape
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{path} is {size[1]}x{size[0]}" for path, size in sizes.items())
        raise DataError(f"size mismatch in pair {sample.name}: {shown} (WxH)")
    return first, second, mask


# ------------------------------------------------------------------------------------------ preflight


def _check_pair(sample: Sample, with_mask: bool, decode: bool) -> list[str]:
    try:
        if decode:
            read_change_pair(sample, with_mask)
            return []
        paths = [sample.image, image_b(sample)] + ([sample.mask] if with_mask and sample.mask is not None else [])
        sizes = {path: image_header(path)[0] for path in paths}
    except DataError as error:
        return [str(error)]
    except DECODE_ERRORS as error:
        return [f"pair {sample.name}: cannot read a file ({type(error).__name__}: {error})"]
    if len(set(sizes.values())) > 1:
        return [
            f"size mismatch in pair {sample.name}: "
            + ", ".join(f"{p} is {s[0]}x{s[1]}" for p, s in sizes.items())
            + " (WxH)"
        ]
    return []


def check_pairs(
    samples: Sequence[Sample], nclass: int, with_masks: bool, level: str, progress: bool = False, desc: str = "check"
) -> DataCheck:
    """Preflight of pairs at ``level`` (headers: formats and sizes; decode: also label values); ``nclass``
    is always 2 (the signature of :func:`unimatch.data.check.check_samples`)."""
    if level == "off" or not samples:
        return DataCheck()
    files = sum(2 + (with_masks and s.mask is not None) for s in samples)
    return run_checks(
        samples, lambda sample: _check_pair(sample, with_masks, level == "decode"), files, progress, desc, "pair"
    )


# ------------------------------------------------------------------------------------------ datasets


def _with_labels(samples: Sequence[Sample], role: str) -> list[Sample]:
    """``samples``, all of which must have a label."""
    if not samples:
        raise DataError(f"no {role} samples")
    missing = [sample.name for sample in samples if sample.mask is None]
    if missing:
        raise DataError(f"{len(missing)} {role} pair(s) have no label, e.g. {missing[0]}")
    return list(samples)


def pair_tensor(first: np.ndarray, second: np.ndarray) -> torch.Tensor:
    """A and B normalised and stacked on the channel axis: (6, H, W) float32."""
    return torch.cat((normalize(first), normalize(second)))


class ChangeLabeledDataset(Dataset):
    """Weakly augmented labeled pairs: ``(pair float32 [6, C, C], mask int64 [C, C])``, padding 255."""

    def __init__(self, samples: Sequence[Sample], crop_size: int) -> None:
        self.samples = _with_labels(samples, "labeled")
        self.crop_size = check_crop_size(crop_size)
        self.weak = weak_pipeline(self.crop_size, LABELED_PAD, RESCALE_RATIO, paired=True)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, second, mask = read_change_pair(self.samples[index])
        view = augment(self.weak, image=first, image_b=second, mask=mask)
        return pair_tensor(view["image"], view["image_b"]), mask_tensor(view["mask"])


class ChangeUnlabeledDataset(Dataset):
    """``(weak, strong1, strong2, ignore_mask, box1, box2)`` per unlabeled pair, each view a 6-channel
    pair: one weak geometry for A and B, strong colour drawn independently per image and per view; the
    CutMix boxes cover the whole pair (A and B mixed with the same box)."""

    def __init__(self, samples: Sequence[Sample], crop_size: int) -> None:
        if not samples:
            raise DataError("no unlabeled samples")
        self.samples = list(samples)
        self.crop_size = check_crop_size(crop_size)
        self.weak = weak_pipeline(self.crop_size, UNLABELED_PAD, RESCALE_RATIO, paired=True)
        self.strong = strong_pipeline(grayscale=0.0)

    def __len__(self) -> int:
        return len(self.samples)

    def _strong(self, first: np.ndarray, second: np.ndarray) -> torch.Tensor:
        return pair_tensor(augment(self.strong, image=first)["image"], augment(self.strong, image=second)["image"])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        first, second, _ = read_change_pair(self.samples[index], with_mask=False)
        view = augment(self.weak, image=first, image_b=second, mask=np.zeros(first.shape[:2], dtype=np.uint8))
        first, second = view["image"], view["image_b"]
        strong1, box1 = self._strong(first, second), cutmix_box(self.crop_size)
        strong2, box2 = self._strong(first, second), cutmix_box(self.crop_size)
        ignore = torch.from_numpy(np.where(view["mask"] == UNLABELED_PAD, IGNORE_INDEX, 0).astype(np.int64))
        return pair_tensor(first, second), strong1, strong2, ignore, box1, box2


class ChangeEvalDataset(Dataset):
    """``(pair float32 [6, H, W], mask int64 [H, W], name)`` at the original size."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = _with_labels(samples, "evaluation")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        sample = self.samples[index]
        first, second, mask = read_change_pair(sample)
        return pair_tensor(first, second), mask_tensor(mask), sample.name
