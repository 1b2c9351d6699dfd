"""Shared fixtures: a tiny dataset in the generic folder layout, written as real image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FOLDER_NCLASS = 3


def write_pair(root: Path, subset: str, name: str, size: tuple[int, int], seed: int, with_mask: bool = True) -> None:
    """An RGB PNG image and (optionally) its L mask with labels 0..FOLDER_NCLASS-1 and some 255."""
    rng = np.random.default_rng(seed)
    width, height = size
    image_path = root / "images" / subset / f"{name}.png"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(image_path)
    if with_mask:
        mask = rng.integers(0, FOLDER_NCLASS, (height, width), dtype=np.uint8)
        mask[:2] = 255
        mask_path = root / "masks" / subset / f"{name}.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(mask_path)


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """ROOT with 12 train images (2 of them without masks), 4 val images and classes.txt."""
    root = tmp_path / "folder"
    for index in range(12):
        write_pair(root, "train", f"t{index:02d}", (40 + index, 30), seed=index, with_mask=index < 10)
    for index in range(4):
        write_pair(root, "val", f"v{index}", (36, 28), seed=100 + index)
    (root / "classes.txt").write_text("bg\nfoo\nbar\n", encoding="utf-8")
    return root
