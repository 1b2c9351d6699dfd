"""Image and mask reading: conversions and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unimatch.data import DataError, read_image, read_mask, read_pair
from unimatch.data.classes import palette


def _save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path)
    return path


def test_rgb_image_round_trip(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    image = read_image(_save(array, tmp_path / "a.png"))
    assert image.dtype == np.uint8 and image.shape == (7, 9, 3)
    np.testing.assert_array_equal(image, array)


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = read_image(_save(gray, tmp_path / "g.png"))
    assert image.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.full((2, 3, 4), 200, dtype=np.uint8)
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 255
    image = read_image(_save(rgba, tmp_path / "rgba.png"))
    assert image.shape == (2, 3, 3)
    assert (image[0] == 0).all() and (image[1] == 200).all()


def test_sixteen_bit_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 257, 257 * 100], [65535, 257 * 255, 128]], dtype=np.uint16)
    path = _save(values, tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    image = read_image(path)
    np.testing.assert_array_equal(image[..., 0], [[0, 1, 100], [255, 255, 0]])


def test_truncated_image_names_the_file(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = _save(array, tmp_path / "truncated.png")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"truncated.png"):
        read_image(path)


def test_zero_byte_and_missing_images_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.jpg"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(DataError, match=r"absent.png"):
        read_image(tmp_path / "absent.png")


def test_palette_and_gray_masks_give_the_same_labels(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [20, 255, 0]], dtype=np.uint8)
    indexed = Image.fromarray(labels)
    indexed.putpalette(palette(256).tobytes())
    indexed.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    _save(labels, tmp_path / "l.png")
    for name in ("p.png", "l.png"):
        mask = read_mask(tmp_path / name, nclass=21)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, labels)


def test_rgb_mask_is_rejected(tmp_path: Path) -> None:
    path = _save(np.zeros((4, 4, 3), dtype=np.uint8), tmp_path / "colour_mask.png")
    with pytest.raises(DataError, match=r"colour_mask.png.*mode RGB"):
        read_mask(path, nclass=3)


def test_label_out_of_range_names_file_and_values(tmp_path: Path) -> None:
    path = _save(np.array([[0, 1, 255], [3, 7, 2]], dtype=np.uint8), tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad.png: label values 3, 7 "):
        read_mask(path, nclass=3)
    assert read_mask(path, nclass=8).max() == 255


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    image = _save(np.zeros((4, 5, 3), dtype=np.uint8), tmp_path / "img.png")
    mask = _save(np.zeros((4, 6), dtype=np.uint8), tmp_path / "msk.png")
    with pytest.raises(DataError, match=r"img.png.*msk.png"):
        read_pair(image, mask, nclass=2)
