"""Preflight of a dataset: every unreadable image, image/mask size mismatch and bad label in one pass,
before training spends an epoch and fails on the first one.

``headers`` reads only file headers (format, size, mode): cheap enough to run at the start of every
training. ``decode`` decodes every file and checks label values too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from ..utils.progress import progress_bar
from .errors import DataError
from .io import DECODE_ERRORS, MASK_MODES, read_image, read_mask
from .splits import Sample

CheckLevel = Literal["headers", "decode", "off"]
SHOWN_IN_ERROR = 3  # problems quoted in the one-line error; `unimatch check-data` lists them all


@dataclass
class DataCheck:
    """What a preflight found: files checked and one line per problem."""

    files: int = 0
    problems: list[str] = field(default_factory=list)

    def merge(self, other: DataCheck) -> None:
        self.files += other.files
        self.problems += other.problems

    def raise_if_bad(self, hint: str = "") -> None:
        if not self.problems:
            return
        count = len(self.problems)
        shown = "; ".join(self.problems[:SHOWN_IN_ERROR]) + (
            f"; ... {count - SHOWN_IN_ERROR} more" if count > SHOWN_IN_ERROR else ""
        )
        raise DataError(f"{count} problem(s) in {self.files} files checked: {shown}{hint}")


def image_header(path: Path) -> tuple[tuple[int, int], str]:
    with Image.open(path) as image:
        return image.size, image.mode


def _check_sample(sample: Sample, nclass: int, with_mask: bool, decode: bool) -> list[str]:
    """The problems of one sample (empty when it is usable)."""
    image_size = mask_size = None
    try:
        if decode:
            image_size = read_image(sample.image).shape[1::-1]
        else:
            image_size, _ = image_header(sample.image)
    except DataError as error:
        return [str(error)]
    except DECODE_ERRORS as error:
        return [f"{sample.image}: cannot read image ({type(error).__name__}: {error})"]
    if not with_mask or sample.mask is None:
        return []
    try:
        if decode:
            mask_size = read_mask(sample.mask, nclass).shape[::-1]
        else:
            mask_size, mode = image_header(sample.mask)
            if mode not in MASK_MODES:
                return [f"{sample.mask}: mask has mode {mode}; expected a single-channel (L) or palette (P) PNG"]
    except DataError as error:
        return [str(error)]
    except DECODE_ERRORS as error:
        return [f"{sample.mask}: cannot read mask ({type(error).__name__}: {error})"]
    if tuple(image_size) != tuple(mask_size):
        return [
            f"size mismatch: image {sample.image} is {image_size[0]}x{image_size[1]}, "
            f"mask {sample.mask} is {mask_size[0]}x{mask_size[1]} (WxH)"
        ]
    return []


def check_samples(
    samples: Sequence[Sample],
    nclass: int,
    with_masks: bool = True,
    level: CheckLevel = "headers",
    progress: bool = False,
    desc: str = "check",
) -> DataCheck:
    """Check every sample (``with_masks``: its mask too, when listed) at ``level``; threads overlap the
    file-system latency of network disks."""
    if level == "off" or not samples:
        return DataCheck()
    files = sum(1 + (with_masks and sample.mask is not None) for sample in samples)
    return run_checks(
        samples, lambda sample: _check_sample(sample, nclass, with_masks, level == "decode"), files, progress, desc
    )


def run_checks(
    samples: Sequence[Sample],
    check_one: Callable[[Sample], list[str]],
    files: int,
    progress: bool,
    desc: str,
    unit: str = "img",
) -> DataCheck:
    """``check_one`` on every sample (its problem lines), in threads that overlap the file-system latency of
    network disks, with a progress bar shown only if slow."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = pool.map(check_one, samples)
        shown = progress_bar(found, total=len(samples), desc=desc, unit=unit, disable=not progress, delay=2)
        problems = [line for lines in shown for line in lines]
    return DataCheck(files, problems)


def check_training_data(
    labeled: Sequence[Sample],
    unlabeled: Sequence[Sample],
    val: Sequence[Sample],
    nclass: int,
    level: CheckLevel = "headers",
    progress: bool = False,
    check: Callable[..., DataCheck] = check_samples,
) -> DataCheck:
    """Preflight of the three splits of a training: images and masks of the labeled and validation
    sets, images of the unlabeled set (whose masks, if listed, are never trained on). ``check``: how a list
    of samples is checked (:func:`check_samples`; change detection's pairs have their own)."""
    report = DataCheck()
    for role, samples, with_masks in (("labeled", labeled, True), ("val", val, True), ("unlabeled", unlabeled, False)):
        report.merge(check(samples, nclass, with_masks, level, progress, f"check {role}"))
    return report
