"""The embedded default dataset: byte-for-byte determinism, content and safe (re)generation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2hsv

from unimatch.data import EMBEDDED_CLASSES, DataError, class_names, generate_embedded, list_dataset, read_pair
from unimatch.data.embedded import class_hue

SMALL = {"n_train": 16, "n_val": 4}


def _hashes(root: Path) -> dict[str, str]:
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def test_generation_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    first = _hashes(generate_embedded(tmp_path / "a", seed=0, **SMALL))
    second = _hashes(generate_embedded(tmp_path / "b", seed=0, **SMALL))
    assert first == second and len(first) == 2 * (16 + 4) + 3
    assert _hashes(generate_embedded(tmp_path / "c", seed=1, **SMALL)) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no staging leftovers


def test_content(tmp_path: Path) -> None:
    root = generate_embedded(tmp_path / "data", **SMALL)
    assert class_names("embedded", root, 7) == list(EMBEDDED_CLASSES)
    assert json.loads((root / "meta.json").read_text())["n_train"] == 16
    present: set[int] = set()
    for subset, count in (("train", 16), ("val", 4)):
        samples = list_dataset("embedded", root, subset)
        assert len(samples) == count
        for sample in samples:
            image, mask = read_pair(sample.image, sample.mask, nclass=7)  # also checks sizes and label range
            assert image.shape == (120, 160, 3)
            present |= set(np.unique(mask).tolist())
    assert 0 in present and len(present - {0}) >= 5


def test_objects_scatter_around_their_class_hue(tmp_path: Path) -> None:
    """Most pixels of each shape class sit near that class's hue (about 40 % would with random hues)."""
    root = generate_embedded(tmp_path / "data", n_train=40, n_val=1)
    hues, labels = [], []
    for sample in list_dataset("embedded", root, "train"):
        image, mask = read_pair(sample.image, sample.mask, nclass=7)
        hsv = rgb2hsv(image)
        keep = hsv[..., 1] > 0.2  # near-grey pixels carry no reliable hue
        hues.append(hsv[..., 0][keep])
        labels.append(mask[keep])
    hue, label = np.concatenate(hues), np.concatenate(labels)
    for index in range(1, len(EMBEDDED_CLASSES)):
        distance = np.abs((hue[label == index] - class_hue(index) + 0.5) % 1.0 - 0.5)
        assert (distance < 0.15).mean() > 0.7, EMBEDDED_CLASSES[index]


def test_existing_dataset_is_kept_unless_forced_or_changed(tmp_path: Path) -> None:
    root = generate_embedded(tmp_path / "data", **SMALL)
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert generate_embedded(root, **SMALL) == root
    assert (root / "meta.json").stat().st_mtime_ns == stamp
    generate_embedded(root, force=True, **SMALL)
    assert (root / "meta.json").stat().st_mtime_ns != stamp
    generate_embedded(root, n_train=8, n_val=4)  # different parameters: regenerated in place
    assert len(list_dataset("embedded", root, "train")) == 8


def test_foreign_directory_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match=r"not an embedded dataset"):
        generate_embedded(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
