"""Augmentation invariants (SPEC §2): shapes, padding values, label sets, CutMix boxes, crop-size checks."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unimatch.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    LabeledDataset,
    UnlabeledDataset,
    check_crop_size,
    cutmix_box,
    list_dataset,
    strong,
    weak,
)

PADDED_PIXEL = torch.from_numpy(-IMAGENET_MEAN / IMAGENET_STD)  # a 0-valued pixel after normalisation


@pytest.mark.parametrize("crop", [0, 13, 100, 113])
def test_crop_must_be_a_multiple_of_14(crop: int, folder_dataset: Path) -> None:
    with pytest.raises(DataError, match=r"dataset.crop_size"):
        check_crop_size(crop)
    with pytest.raises(DataError, match=r"dataset.crop_size"):
        UnlabeledDataset(list_dataset("folder", folder_dataset, "train"), crop)


def test_weak_rescales_the_long_side_and_crops() -> None:
    rng = random.Random(0)
    image, mask = Image.new("RGB", (100, 50)), Image.new("L", (100, 50))
    for _ in range(50):
        out_image, out_mask = weak(image, mask, 28, 255, rng)
        assert out_image.size == out_mask.size == (28, 28)


def test_labeled_crop_pads_with_255(folder_dataset: Path) -> None:
    random.seed(0)
    samples = [s for s in list_dataset("folder", folder_dataset, "train") if s.mask is not None]
    source_labels = {0, 1, 2, 255}
    for image, mask in LabeledDataset(samples, 3, 112):  # images <= 51 px wide: x2 < 112, always padded
        assert image.shape == (3, 112, 112) and image.dtype == torch.float32
        assert mask.shape == (112, 112) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= source_labels
        # Bottom-right corner is padding whatever the flip (padding goes right/bottom, flip mirrors it left).
        assert mask[-1, -1] == 255 or mask[-1, 0] == 255
        padded = mask[-1] == 255
        assert torch.allclose(image[:, -1][:, padded], PADDED_PIXEL[:, None].expand(3, int(padded.sum())))


def test_unlabeled_padding_becomes_ignore_mask(folder_dataset: Path) -> None:
    random.seed(1)
    dataset = UnlabeledDataset(list_dataset("folder", folder_dataset, "train"), 112)
    assert len(dataset) == 12  # mask-less images included; masks are never read
    for weak_view, strong1, strong2, ignore, box1, box2 in dataset:
        for view in (weak_view, strong1, strong2):
            assert view.shape == (3, 112, 112) and view.dtype == torch.float32
        assert ignore.dtype == torch.int64 and set(ignore.unique().tolist()) == {0, 255}
        padding = ignore == 255
        assert torch.allclose(weak_view.permute(1, 2, 0)[padding], PADDED_PIXEL.expand(int(padding.sum()), 3))
        assert not torch.allclose(weak_view.permute(1, 2, 0)[~padding].std(0), torch.zeros(3))
        for box in (box1, box2):
            assert box.shape == (112, 112) and set(box.unique().tolist()) <= {0, 1}


def test_unlabeled_padding_value_is_254_before_the_ignore_mask() -> None:
    image, mask = weak(Image.new("RGB", (10, 10), (9, 9, 9)), Image.new("L", (10, 10), 0), 56, 254, random.Random(0))
    assert set(np.unique(np.asarray(mask))) == {0, 254}
    assert (np.asarray(image)[np.asarray(mask) == 254] == 0).all()


def test_augmentations_are_reproducible_under_seeding(folder_dataset: Path) -> None:
    dataset = UnlabeledDataset(list_dataset("folder", folder_dataset, "train"), 56)
    random.seed(5)
    first = dataset[3]
    random.seed(5)
    second = dataset[3]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_strong_keeps_size_and_changes_pixels() -> None:
    rng = random.Random(0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8))
    views = [strong(image, rng) for _ in range(20)]
    assert all(view.size == (28, 28) and view.mode == "RGB" for view in views)
    assert any(not np.array_equal(np.asarray(view), np.asarray(image)) for view in views)


@pytest.mark.parametrize("size", [14, 56, 112])
def test_cutmix_boxes_fit_and_have_the_right_area(size: int) -> None:
    rng = random.Random(0)
    boxes = [cutmix_box(size, p=1.0, rng=rng) for _ in range(300)]
    for box in boxes:
        rows, cols = torch.nonzero(box, as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert int(box.sum()) == height * width  # one solid rectangle, inside the crop by construction
        # int() truncation of both sides loses at most (w + h + 1) pixels of the drawn area.
        assert 0.02 * size * size - (width + height + 1) <= height * width <= 0.4 * size * size
    assert len({tuple(torch.nonzero(b)[0].tolist()) for b in boxes}) > 10  # positions vary


def test_cutmix_probability() -> None:
    rng = random.Random(0)
    assert all(cutmix_box(56, p=0.0, rng=rng).sum() == 0 for _ in range(100))
    hits = sum(int(cutmix_box(56, p=0.5, rng=rng).sum() > 0) for _ in range(400))
    assert 150 < hits < 250
