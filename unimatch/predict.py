"""Prediction on a folder of images: label PNGs (palette) and overlay figures to look at.

An overlay figure shows image | ground truth (when a mask is given) | prediction, small images
upscaled, the classes tinted with the project palette (background left as the image) and a legend
of the classes drawn.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from skimage.color import label2rgb

from .config import ConfigError, ExperimentConfig
from .data import DataError, Sample, check_samples, list_image_folder, palette, read_image, read_mask
from .data import class_names as dataset_class_names
from .data.transforms import normalize
from .evaluation import exceeds_token_budget, predict_image
from .io_atomic import atomic_write, check_output_dir
from .progress import progress_bar

log = logging.getLogger(__name__)
SHORT_SIDE_PX = 360  # small images are upscaled until their short side reaches this ...
LONG_SIDE_PX = 1600  # ... unless their long side would pass this
FONT_PX = 16
PAD_PX = 8
_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont  # the latter where Pillow lacks FreeType


def overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (H, W, 3 uint8) with class k tinted by ``colours[k]`` (skimage's label2rgb); the
    background (class 0) and ignored pixels (values past the palette, e.g. 255) stay the image."""
    drawn = np.where(labels < len(colours), labels, 0)
    present = [k for k in np.unique(drawn) if k > 0]
    # label2rgb gives colours to the labels present by rank, not by value: pass exactly theirs, in order.
    blended = label2rgb(drawn, image, colors=colours[present] / 255, alpha=alpha, bg_label=0, bg_color=None,
                        saturation=1)  # saturation=1: the image keeps its colours (0 would grey it)
    return (blended * 255).round().astype(np.uint8)


def display_factor(height: int, width: int) -> int:
    """Whole-number upscaling of an image for its figure: every label pixel becomes an equal block."""
    return max(1, min(math.ceil(SHORT_SIDE_PX / min(height, width)), LONG_SIDE_PX // max(height, width)))


def overlay_panels(
    image: np.ndarray, prediction: np.ndarray, colours: np.ndarray, truth: np.ndarray | None = None
) -> list[tuple[str, np.ndarray]]:
    """(title, RGB array) of each panel: image | ground truth (if ``truth``) | prediction, upscaled."""
    factor = display_factor(*image.shape[:2])
    size = (image.shape[1] * factor, image.shape[0] * factor)
    shown = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))

    def tinted(labels: np.ndarray) -> np.ndarray:
        # Nearest (whole blocks): a class boundary stays exactly where the labels put it.
        return overlay(shown, labels.repeat(factor, axis=0).repeat(factor, axis=1), colours)

    truth_panel = [] if truth is None else [("ground truth", tinted(truth))]
    return [("image", shown), *truth_panel, ("prediction", tinted(prediction))]


def legend_entries(names: list[str], *label_maps: np.ndarray) -> list[tuple[int, str]]:
    """(class, name) of every class drawn in ``label_maps``: background and ignored pixels are not."""
    present = np.unique(np.concatenate([np.unique(labels) for labels in label_maps]))
    return [(int(k), names[k]) for k in present if 0 < k < len(names)]


def overlay_figure(
    image: np.ndarray, prediction: np.ndarray, colours: np.ndarray, names: list[str], truth: np.ndarray | None = None
) -> Image.Image:
    """The figure of one prediction: titled panels side by side and the legend below them."""
    panels = overlay_panels(image, prediction, colours, truth)
    entries = legend_entries(names, prediction, *([] if truth is None else [truth]))
    font = _font()
    height, width = panels[0][1].shape[:2]
    line = FONT_PX + PAD_PX
    canvas_width = len(panels) * (width + PAD_PX) + PAD_PX
    cell, per_row = _legend_grid(entries, font, canvas_width)
    legend_top = line + height + PAD_PX
    canvas = Image.new("RGB", (canvas_width, legend_top + line * (1 + math.ceil(len(entries) / per_row)) + PAD_PX),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for index, (title, array) in enumerate(panels):
        left = PAD_PX + index * (width + PAD_PX)
        draw.text((left, PAD_PX // 2), title, fill="black", font=font)
        canvas.paste(Image.fromarray(array), (left, line))
    _draw_legend(draw, entries, colours, font, legend_top, cell, per_row)
    return canvas


@functools.cache
def _font() -> _Font:
    return ImageFont.load_default(size=FONT_PX)  # Pillow's own font: no system font to depend on


def _draw_legend(
    draw: ImageDraw.ImageDraw, entries: list[tuple[int, str]], colours: np.ndarray, font: _Font, top: int, cell: int,
    per_row: int,
) -> None:
    """A title line, then a swatch of the pure palette colour and the name of each class, row by row."""
    line = FONT_PX + PAD_PX
    draw.text((PAD_PX, top), "classes (background: not tinted)" if entries else "background only", fill="black",
              font=font)
    for index, (k, name) in enumerate(entries):
        left, y = PAD_PX + (index % per_row) * cell, top + line * (1 + index // per_row)
        draw.rectangle((left, y, left + FONT_PX, y + FONT_PX), fill=tuple(int(c) for c in colours[k]), outline="black")
        draw.text((left + FONT_PX + PAD_PX // 2, y), name, fill="black", font=font)


def _legend_grid(entries: list[tuple[int, str]], font: _Font, width: int) -> tuple[int, int]:
    """Width of one legend cell (swatch and the longest name) and how many cells fit on a line."""
    longest = max((font.getlength(name) for _, name in entries), default=0)
    cell = FONT_PX + PAD_PX // 2 + math.ceil(longest) + 2 * PAD_PX
    return cell, max(1, (width - PAD_PX) // cell)


def label_png(labels: np.ndarray, colours: np.ndarray) -> Image.Image:
    png = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(colours)] = colours
    png.putpalette(flat.flatten().tolist())
    return png


def _save_atomic(image: Image.Image, path: Path, **options: object) -> None:
    """A prediction is whole or absent, even if the process is killed while it is written."""
    atomic_write(path, lambda file: image.save(file, format=path.suffix.lstrip(".").replace("jpg", "jpeg").upper(), **options))


def _with_masks(samples: list[Sample], masks_dir: str | Path | None) -> list[Sample]:
    """``samples`` with ``masks_dir/<relative path>.png`` as their mask where that file exists."""
    if masks_dir is None:
        return samples
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise DataError(f"{masks_dir}: masks folder not found (nothing was written)")
    masks = [masks_dir / Path(sample.name).with_suffix(".png") for sample in samples]
    return [Sample(sample.image, mask if mask.is_file() else None, sample.name)
            for sample, mask in zip(samples, masks, strict=True)]


def _read_truth(sample: Sample, nclass: int) -> np.ndarray | None:
    """The ground truth of ``sample`` if it has a readable mask; a bad mask costs only its panel."""
    if sample.mask is None:
        return None
    try:
        return read_mask(sample.mask, nclass)
    except DataError as error:
        log.warning("no ground-truth panel: %s", error)
        return None


@torch.no_grad()
def predict_folder(
    model: torch.nn.Module,
    input_dir: str | Path,
    output_dir: str | Path,
    cfg: ExperimentConfig,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    progress: bool = True,
    *,
    masks_dir: str | Path | None = None,
    class_names: list[str] | None = None,
) -> list[Path]:
    """Write ``labels/NAME.png`` and ``overlays/NAME.jpg`` for every image under ``input_dir`` (the first
    ``limit`` of them), predicted as ``cfg.eval`` says (sliding windows above ``eval.max_tokens``).

    ``masks_dir``: ground truth, ``<masks_dir>/<relative image path>.png``; an image with a mask gets a
    ground-truth panel in its overlay. ``class_names``: the legend's names (default: the dataset's).

    Every file's header is checked before anything is written; an image that still fails to decode is
    skipped with a warning, and a DataError after the others are written says which."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be a positive number, got {limit}")
    nclass, window = cfg.dataset.nclass, cfg.eval.window or cfg.dataset.crop_size
    names = dataset_class_names(cfg) if class_names is None else list(class_names)
    if len(names) != nclass:
        raise ConfigError(f"class_names: {len(names)} names given for dataset.nclass={nclass} classes")
    output_dir = check_output_dir(output_dir, "--output")
    samples = _with_masks(list_image_folder(input_dir)[:limit], masks_dir)
    check_samples(samples, nclass, with_masks=masks_dir is not None).raise_if_bad(" (nothing was written)")
    colours = palette(nclass)
    model.eval()
    written, skipped = [], []
    for sample in progress_bar(samples, desc="predict", unit="img", disable=not progress):
        try:
            image = read_image(sample.image)
        except DataError as error:
            log.warning("skipped: %s", error)
            skipped.append(sample.name)
            continue
        if exceeds_token_budget(model, cfg.eval.mode, *image.shape[:2], cfg.eval.max_tokens):
            log.warning("%s: %dx%d px is above eval.max_tokens=%d in original mode; predicting it in sliding "
                        "windows of %d px", sample.image, image.shape[1], image.shape[0], cfg.eval.max_tokens, window)
        batch = normalize(Image.fromarray(image)).unsqueeze(0).to(device)
        logits = predict_image(model, batch, cfg.eval.mode, window, cfg.eval.stride_ratio, cfg.eval.batch_size,
                               cfg.eval.max_tokens, progress)
        labels = logits.argmax(dim=1)[0].cpu().numpy()
        stem = Path(sample.name).with_suffix("").as_posix().replace("/", "__")
        _save_atomic(label_png(labels, colours), output_dir / "labels" / f"{stem}.png")
        figure = overlay_figure(image, labels, colours, names, _read_truth(sample, nclass))
        # 4:4:4 chroma: the default 4:2:0 smears the tints and the legend's text.
        _save_atomic(figure, output_dir / "overlays" / f"{stem}.jpg", quality=92, subsampling=0)
        written.append(output_dir / "overlays" / f"{stem}.jpg")
    if skipped:
        raise DataError(f"{len(skipped)} of {len(samples)} images could not be decoded and were skipped "
                        f"({', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}); the other {len(written)} "
                        f"predictions are in {output_dir}")
    return written
