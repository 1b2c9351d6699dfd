"""Torch datasets: evaluation samples at the original size, bad files surfacing as DataError, the
albumentations pipelines being what the training datasets run, and their seeding across worker processes."""

from __future__ import annotations

import random
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from unimatch.data import (
    DataError,
    EvalDataset,
    LabeledDataset,
    Sample,
    StrongLabeledDataset,
    UnlabeledDataset,
    list_dataset,
    normalize,
    read_image,
    read_mask,
)
from unimatch.engine.setup import make_loader
from unimatch.engine.stream import SampleStream, StreamPositions


def test_eval_dataset_keeps_the_original_size(folder_dataset: Path) -> None:
    dataset = EvalDataset(list_dataset("folder", folder_dataset, "val"), nclass=3)
    image, mask, name = dataset[0]
    assert image.shape == (3, 28, 36) and image.dtype == torch.float32
    assert mask.shape == (28, 36) and mask.dtype == torch.int64
    expected = np.asarray(Image.open(folder_dataset / "masks/val/v0.png"))
    assert name == "images/val/v0.png" and np.array_equal(mask.numpy(), expected)


def test_datasets_need_masks_where_they_train_or_evaluate(folder_dataset: Path) -> None:
    samples = list_dataset("folder", folder_dataset, "train")
    with pytest.raises(DataError, match=r"t10"):
        LabeledDataset(samples, 3, 56)
    with pytest.raises(DataError, match=r"no mask"):
        EvalDataset(samples, 3)
    with pytest.raises(DataError, match=r"no unlabeled"):
        UnlabeledDataset([], 56)


def test_bad_files_surface_as_data_errors(folder_dataset: Path) -> None:
    samples = list_dataset("folder", folder_dataset, "val")
    Image.fromarray(np.zeros((28, 35), dtype=np.uint8)).save(samples[0].mask)
    Image.fromarray(np.full((28, 36), 9, dtype=np.uint8)).save(samples[1].mask)
    samples[2].image.write_bytes(b"")
    dataset = EvalDataset(samples, nclass=3)
    with pytest.raises(DataError, match=r"v0.png.*v0.png"):
        dataset[0]
    with pytest.raises(DataError, match=r"masks/val/v1.png: label values 9"):
        LabeledDataset(samples, 3, 56)[1]
    with pytest.raises(DataError, match=r"images/val/v2.png: cannot read image"):
        UnlabeledDataset(samples, 56)[2]
    missing = Sample(folder_dataset / "gone.png", None, "gone.png")
    with pytest.raises(DataError, match=r"gone.png: file not found"):
        UnlabeledDataset([missing], 56)[0]


def test_training_datasets_run_their_albumentations_pipelines(folder_dataset: Path) -> None:
    samples = [s for s in list_dataset("folder", folder_dataset, "train") if s.mask is not None]
    labeled, unlabeled = LabeledDataset(samples, 3, 28), UnlabeledDataset(samples, 28)
    for pipeline in (labeled.weak, unlabeled.weak, unlabeled.strong):
        assert isinstance(pipeline, A.Compose)
    # Swap in deterministic pipelines: the outputs must be exactly what they compute.
    corner = A.Compose([A.Crop(0, 0, 28, 28), A.HorizontalFlip(p=1.0)])
    labeled.weak = unlabeled.weak = corner
    unlabeled.strong = A.Compose([A.InvertImg(p=1.0)])
    image, mask = read_image(samples[0].image)[:28, :28, :][:, ::-1], read_mask(samples[0].mask, 3)[:28, :28][:, ::-1]
    out_image, out_mask = labeled[0]
    assert torch.equal(out_image, normalize(image)) and torch.equal(out_mask, torch.from_numpy(mask.astype(np.int64)))
    weak, strong1, strong2, ignore, _, _ = unlabeled[0]
    assert torch.equal(weak, normalize(image)) and not ignore.any()  # no padding: the crop is inside the image
    assert torch.equal(strong1, normalize(255 - image)) and torch.equal(strong2, normalize(255 - image))


def test_strong_labeled_dataset_cuts_out_one_ignored_box_of_random_pixels(folder_dataset: Path) -> None:
    """ST's CutOut: with probability 1/2 one solid box (2-40 % of the crop) whose pixels are replaced and whose
    labels become 255; everything outside the box is the crop as it was."""
    samples = [s for s in list_dataset("folder", folder_dataset, "train") if s.mask is not None]
    dataset = StrongLabeledDataset(samples, 3, 28, cutout=True)
    dataset.weak, dataset.strong = A.Compose([A.Crop(0, 2, 28, 30)]), A.Compose([])  # below the 255 rows; deterministic
    image, mask = normalize(read_image(samples[0].image)[2:30, :28]), torch.from_numpy(read_mask(samples[0].mask, 3)[2:30, :28].astype(np.int64))
    assert (mask != 255).all()
    boxes = 0
    for seed in range(20):
        random.seed(seed)
        out_image, out_mask = dataset[0]
        box = out_mask == 255
        if not box.any():
            assert torch.equal(out_image, image) and torch.equal(out_mask, mask)
            continue
        boxes += 1
        rows, cols = torch.nonzero(box, as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert int(box.sum()) == height * width and 0.02 * 28 * 28 - (height + width + 1) <= height * width <= 0.4 * 28 * 28
        assert torch.equal(out_mask[~box], mask[~box]) and torch.equal(out_image[:, ~box], image[:, ~box])
        assert (out_image[:, box] != image[:, box]).float().mean() > 0.9  # new pixels, uniformly drawn
    assert 4 <= boxes <= 16  # p = 0.5
    plain = StrongLabeledDataset(samples, 3, 28, cutout=False)
    plain.weak, plain.strong = dataset.weak, dataset.strong
    assert all(torch.equal(plain[0][1], mask) for _ in range(10))  # AllSpark's labeled crops: no CutOut


def batches_equal(first: list, second: list) -> bool:
    return all(torch.equal(a, b) for x, y in zip(first, second, strict=True) for a, b in zip(x, y, strict=True))


def test_a_seed_gives_the_same_samples_in_the_main_process_and_in_workers(folder_dataset: Path) -> None:
    dataset = UnlabeledDataset(list_dataset("folder", folder_dataset, "train"), 56)
    stream = SampleStream(dataset, 12, 1, seed=3, stream=1)

    def load(workers: int) -> list:
        return list(make_loader(stream, StreamPositions(0, 3, 4), 4, workers, torch.device("cpu"), seed=0))

    assert batches_equal(load(0), load(2))


def test_dataloader_worker_seeds_drive_the_augmentations(folder_dataset: Path) -> None:
    dataset = UnlabeledDataset(list_dataset("folder", folder_dataset, "train"), 56)

    def first_batch(seed: int) -> list:
        loader = DataLoader(dataset, batch_size=4, num_workers=1, generator=torch.Generator().manual_seed(seed))
        return [next(iter(loader))]

    assert batches_equal(first_batch(0), first_batch(0))
    assert not batches_equal(first_batch(0), first_batch(1))
