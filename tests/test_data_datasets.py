"""Torch datasets: evaluation samples at the original size, and bad files surfacing as DataError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unimatch.data import DataError, EvalDataset, LabeledDataset, Sample, UnlabeledDataset, list_dataset


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
