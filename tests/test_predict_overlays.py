"""Prediction overlay figures: label2rgb tints in the project palette, upscaled panels, a legend of the
classes drawn and a ground-truth panel where a mask exists; the label PNGs stay as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import label2rgb

from unimatch.apps import predict
from unimatch.apps.predict import (
    FONT_PX,
    PAD_PX,
    display_factor,
    legend_entries,
    overlay,
    overlay_figure,
    overlay_panels,
    predict_folder,
)
from unimatch.config import ExperimentConfig, load_config
from unimatch.data import DataError, palette
from unimatch.errors import ConfigError

NCLASS = 7
COLOURS = palette(NCLASS)
NAMES = ["background", "disk", "square", "triangle", "cross", "star", "ring"]


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_classes_are_blended_by_label2rgb_with_their_palette_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def spy(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(kwargs)
        return label2rgb(*args, **kwargs)

    monkeypatch.setattr(predict, "label2rgb", spy)
    image = random_image(30, 40)
    labels = np.zeros((30, 40), dtype=np.uint8)
    labels[5:10, 5:10] = 5  # classes 2 and 5 only: label2rgb would colour them by rank (1st, 2nd) if let
    labels[20:25, 20:25] = 2
    labels[0, :] = 255  # ignored ground truth

    tinted = overlay(image, labels, COLOURS, alpha=0.5)

    assert len(calls) == 1 and calls[0]["bg_label"] == 0
    for k, (row, col) in ((5, (7, 7)), (2, (22, 22))):
        expected = 0.5 * COLOURS[k].astype(float) + 0.5 * image[row, col].astype(float)
        assert np.abs(tinted[row, col].astype(float) - expected).max() <= 1, k
    untouched = (labels == 0) | (labels == 255)
    assert (tinted[untouched] == image[untouched]).all()  # background and ignore stay the image
    assert (overlay(image, np.zeros_like(labels), COLOURS) == image).all()


def test_small_images_are_upscaled_with_label_blocks_and_large_ones_are_not() -> None:
    image, labels = random_image(30, 40), np.zeros((30, 40), dtype=np.uint8)
    labels[0, 0] = 3
    factor = display_factor(30, 40)
    assert factor > 1 and min(30, 40) * factor >= 360
    panels = overlay_panels(image, labels, COLOURS)
    assert [title for title, _ in panels] == ["image", "prediction"]
    assert all(panel.shape == (30 * factor, 40 * factor, 3) for _, panel in panels)
    shown, predicted = panels[0][1], panels[1][1]
    block = np.zeros(shown.shape[:2], dtype=bool)
    block[:factor, :factor] = True  # one label pixel: a whole factor x factor block (nearest), nothing more
    assert (predicted[block] != shown[block]).any(axis=-1).all()
    assert (predicted[~block] == shown[~block]).all()
    assert display_factor(600, 800) == 1 and display_factor(8, 1600) == 1  # never past 1600 px long


def test_legend_lists_exactly_the_classes_drawn() -> None:
    prediction = np.array([[0, 1], [4, 4]], dtype=np.uint8)
    truth = np.array([[0, 6], [255, 1]], dtype=np.uint8)
    assert legend_entries(NAMES, prediction) == [(1, "disk"), (4, "cross")]
    assert legend_entries(NAMES, prediction, truth) == [(1, "disk"), (4, "cross"), (6, "ring")]
    assert legend_entries(NAMES, np.zeros((2, 2), dtype=np.uint8)) == []


def test_figure_legend_shows_a_swatch_for_each_class_present_and_no_other() -> None:
    image, prediction = random_image(30, 40), np.zeros((30, 40), dtype=np.uint8)
    prediction[:10] = 2
    prediction[20:] = 5
    figure = np.asarray(overlay_figure(image, prediction, COLOURS, NAMES))
    factor = display_factor(30, 40)
    legend = figure[FONT_PX + PAD_PX + 30 * factor :].reshape(-1, 3)  # below the title line and the panels
    shown = {k for k in range(1, NCLASS) if (legend == COLOURS[k]).all(axis=1).sum() >= 100}
    assert shown == {2, 5}
    assert figure.shape[1] == 2 * (40 * factor + PAD_PX) + PAD_PX  # image | prediction


class Halves(torch.nn.Module):
    """Class 1 on the left half of every image, class 2 on the right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], NCLASS, *x.shape[-2:])
        logits[:, 1, :, : x.shape[-1] // 2] = 1
        logits[:, 2, :, x.shape[-1] // 2 :] = 1
        return logits


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path]:
    """images/a.png and images/sub/b.png (40x30); a mask only for a."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    (images / "sub").mkdir(parents=True)
    masks.mkdir()
    Image.fromarray(random_image(30, 40, 1)).save(images / "a.png")
    Image.fromarray(random_image(30, 40, 2)).save(images / "sub" / "b.png")
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[10:20, 10:30] = 6
    Image.fromarray(mask).save(masks / "a.png")
    return images, masks


def config() -> ExperimentConfig:
    return load_config(None, [f"dataset.nclass={NCLASS}", "dataset.name=folder", "dataset.root=unused"])


def test_ground_truth_panel_only_for_images_with_a_mask(folder: tuple[Path, Path], tmp_path: Path) -> None:
    images, masks = folder
    out = tmp_path / "out"
    written = predict_folder(Halves(), images, out, config(), "cpu", None, False, masks_dir=masks, class_names=NAMES)
    assert sorted(path.name for path in written) == ["a.jpg", "sub__b.jpg"]
    panel = 40 * display_factor(30, 40) + PAD_PX
    with Image.open(out / "overlays" / "a.jpg") as a, Image.open(out / "overlays" / "sub__b.jpg") as b:
        assert (a.width, b.width) == (3 * panel + PAD_PX, 2 * panel + PAD_PX)  # image | ground truth | prediction
        assert a.height == b.height > 30 * display_factor(30, 40)

    plain = tmp_path / "plain"
    predict_folder(Halves(), images, plain, config(), "cpu", None, False, class_names=NAMES)
    with Image.open(plain / "overlays" / "a.jpg") as a:
        assert a.width == 2 * panel + PAD_PX  # no masks_dir: no ground truth


def test_label_pngs_stay_palette_images_at_the_image_size(folder: tuple[Path, Path], tmp_path: Path) -> None:
    images, masks = folder
    predict_folder(Halves(), images, tmp_path / "out", config(), "cpu", None, False, masks_dir=masks, class_names=NAMES)
    with Image.open(tmp_path / "out" / "labels" / "a.png") as png:
        assert png.mode == "P" and png.size == (40, 30)
        labels = np.asarray(png)
        assert np.array(png.getpalette()[: 3 * NCLASS]).reshape(NCLASS, 3).tolist() == COLOURS.tolist()
    assert set(np.unique(labels)) == {1, 2} and (labels[:, :15] == 1).all() and (labels[:, 25:] == 2).all()
    assert not list((tmp_path / "out").rglob("*.tmp"))  # atomic writes leave no temporary file


def test_bad_names_or_masks_folder_write_nothing(folder: tuple[Path, Path], tmp_path: Path) -> None:
    images, _ = folder
    with pytest.raises(ConfigError, match="class_names: 2 names"):
        predict_folder(Halves(), images, tmp_path / "out", config(), class_names=["a", "b"], progress=False)
    with pytest.raises(DataError, match="masks folder not found"):
        predict_folder(Halves(), images, tmp_path / "out", config(), masks_dir=tmp_path / "nope", progress=False)
    assert not (tmp_path / "out" / "labels").exists() and not (tmp_path / "out" / "overlays").exists()
