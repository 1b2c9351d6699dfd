"""Prediction on a folder of images (or of image pairs, for change detection): label PNGs and overlay
figures to look at.

An overlay figure shows image | ground truth (when a mask is given) | prediction, small images
upscaled, the classes tinted with the project palette (background left as the image) and a legend
of the classes drawn. For a pair it shows A | B | ground truth | predicted change, the change tinted on B,
and the label PNG is a LEVIR-CD style mask (0 unchanged, 255 changed).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from skimage.color import label2rgb

from ..config import ExperimentConfig
from ..data import DataError, Sample, check_samples, list_image_folder, palette, read_image, read_mask
from ..data import class_names as dataset_class_names
from ..data.change import CHANGED, pair_tensor, read_change_mask
from ..data.transforms import normalize
from ..engine.inference import exceeds_token_budget, predict_image
from ..errors import ConfigError
from ..utils.atomic import atomic_write, check_output_dir
from ..utils.progress import progress_bar

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
    blended = label2rgb(
        drawn, image, colors=colours[present] / 255, alpha=alpha, bg_label=0, bg_color=None, saturation=1
    )  # saturation=1: the image keeps its colours (0 would grey it)
    return (blended * 255).round().astype(np.uint8)


def display_factor(height: int, width: int) -> int:
    """Whole-number upscaling of an image for its figure: every label pixel becomes an equal block."""
    return max(1, min(math.ceil(SHORT_SIDE_PX / min(height, width)), LONG_SIDE_PX // max(height, width)))


def overlay_panels(
    image: np.ndarray,
    prediction: np.ndarray,
    colours: np.ndarray,
    truth: np.ndarray | None = None,
    before: np.ndarray | None = None,
) -> list[tuple[str, np.ndarray]]:
    """(title, RGB array) of each panel: image | ground truth (if ``truth``) | prediction, upscaled; with
    ``before`` (a pair's A, ``image`` being its B): A | B | ground truth | prediction, tinted on B."""
    factor = display_factor(*image.shape[:2])
    size = (image.shape[1] * factor, image.shape[0] * factor)
    shown = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))

    def tinted(labels: np.ndarray) -> np.ndarray:
        # Nearest (whole blocks): a class boundary stays exactly where the labels put it.
        return overlay(shown, labels.repeat(factor, axis=0).repeat(factor, axis=1), colours)

    truth_panel = [] if truth is None else [("ground truth", tinted(truth))]
    if before is not None:
        first = np.asarray(Image.fromarray(before).resize(size, Image.Resampling.BICUBIC))
        return [("A (before)", first), ("B (after)", shown), *truth_panel, ("predicted change", tinted(prediction))]
    return [("image", shown), *truth_panel, ("prediction", tinted(prediction))]


def legend_entries(names: list[str], *label_maps: np.ndarray) -> list[tuple[int, str]]:
    """(class, name) of every class drawn in ``label_maps``: background and ignored pixels are not."""
    present = np.unique(np.concatenate([np.unique(labels) for labels in label_maps]))
    return [(int(k), names[k]) for k in present if 0 < k < len(names)]


def overlay_figure(
    image: np.ndarray,
    prediction: np.ndarray,
    colours: np.ndarray,
    names: list[str],
    truth: np.ndarray | None = None,
    before: np.ndarray | None = None,
) -> Image.Image:
    """The figure of one prediction: titled panels side by side and the legend below them."""
    panels = overlay_panels(image, prediction, colours, truth, before)
    entries = legend_entries(names, prediction, *([] if truth is None else [truth]))
    font = _font()
    height, width = panels[0][1].shape[:2]
    line = FONT_PX + PAD_PX
    canvas_width = len(panels) * (width + PAD_PX) + PAD_PX
    cell, per_row = _legend_grid(entries, font, canvas_width)
    legend_top = line + height + PAD_PX
    canvas = Image.new(
        "RGB", (canvas_width, legend_top + line * (1 + math.ceil(len(entries) / per_row)) + PAD_PX), "white"
    )
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
    draw: ImageDraw.ImageDraw,
    entries: list[tuple[int, str]],
    colours: np.ndarray,
    font: _Font,
    top: int,
    cell: int,
    per_row: int,
) -> None:
    """A title line, then a swatch of the pure palette colour and the name of each class, row by row."""
    line = FONT_PX + PAD_PX
    draw.text(
        (PAD_PX, top), "classes (background: not tinted)" if entries else "background only", fill="black", font=font
    )
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
    atomic_write(
        path, lambda file: image.save(file, format=path.suffix.lstrip(".").replace("jpg", "jpeg").upper(), **options)
    )


def _with_masks(samples: list[Sample], masks_dir: str | Path | None) -> list[Sample]:
    """``samples`` with ``masks_dir/<relative path>.png`` as their mask where that file exists."""
    if masks_dir is None:
        return samples
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise DataError(f"{masks_dir}: masks folder not found (nothing was written)")
    masks = [masks_dir / Path(sample.name).with_suffix(".png") for sample in samples]
    return [
        Sample(sample.image, mask if mask.is_file() else None, sample.name)
        for sample, mask in zip(samples, masks, strict=True)
    ]


def _read_truth(sample: Sample, nclass: int, pairs: bool = False) -> np.ndarray | None:
    """The ground truth of ``sample`` if it has a readable mask; a bad mask costs only its panel."""
    if sample.mask is None:
        return None
    try:
        return read_change_mask(sample.mask) if pairs else read_mask(sample.mask, nclass)
    except DataError as error:
        log.warning("no ground-truth panel: %s", error)
        return None


def _second_images(samples: list[Sample], second_dir: str | Path) -> dict[str, Path]:
    """Each A image's B image: the same relative path under ``second_dir``; all must exist."""
    second_dir = Path(second_dir)
    seconds = {sample.name: second_dir / sample.name for sample in samples}
    missing = [str(path) for path in seconds.values() if not path.is_file()]
    if missing:
        raise DataError(
            f"{missing[0]}: B image not found ({len(missing)} of {len(samples)} A images have no B image; "
            "nothing was written)"
        )
    return seconds


def _same_size(second: np.ndarray, first: np.ndarray, second_path: Path, first_path: Path) -> np.ndarray:
    if second.shape != first.shape:
        raise DataError(
            f"size mismatch: A image {first_path} is {first.shape[1]}x{first.shape[0]}, "
            f"B image {second_path} is {second.shape[1]}x{second.shape[0]} (WxH)"
        )
    return second


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
    second_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``labels/NAME.png`` and ``overlays/NAME.jpg`` for every image under ``input_dir`` (the first
    ``limit`` of them), predicted as ``cfg.eval`` says (sliding windows above ``eval.max_tokens``).

    ``masks_dir``: ground truth, ``<masks_dir>/<relative image path>.png``; an image with a mask gets a
    ground-truth panel in its overlay. ``class_names``: the legend's names (default: the dataset's).
    ``second_dir``: change detection; ``input_dir`` holds the A images and ``second_dir`` the B image of
    the same relative path; labels are 0/255 change masks. ``only``: the relative paths to predict
    (e.g. the val pairs of a change-detection dataset whose A folder holds every pair), before ``limit``.

    Every file's header is checked before anything is written; an image that still fails to decode is
    skipped with a warning, and a DataError after the others are written says which."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be a positive number, got {limit}")
    nclass, window = cfg.dataset.nclass, cfg.eval.window or cfg.dataset.crop_size
    names = dataset_class_names(cfg.dataset) if class_names is None else list(class_names)
    if len(names) != nclass:
        raise ConfigError(f"class_names: {len(names)} names given for dataset.nclass={nclass} classes")
    output_dir = check_output_dir(output_dir, "--output")
    pairs = second_dir is not None
    listed = list_image_folder(input_dir)
    if only is not None:
        wanted = set(only)
        listed = [sample for sample in listed if sample.name in wanted]
    samples = _with_masks(listed[:limit], masks_dir)
    seconds = _second_images(samples, second_dir) if pairs else {}
    if not pairs:  # pairs are checked as they are read (A, B and label sizes must agree)
        check_samples(samples, nclass, with_masks=masks_dir is not None).raise_if_bad(" (nothing was written)")
    colours = palette(nclass)
    model.eval()
    written, skipped = [], []
    for sample in progress_bar(samples, desc="predict", unit="img", disable=not progress):
        try:
            image, before = read_image(sample.image), None
            if pairs:
                before, image = (
                    image,
                    _same_size(read_image(seconds[sample.name]), image, seconds[sample.name], sample.image),
                )
        except DataError as error:
            log.warning("skipped: %s", error)
            skipped.append(sample.name)
            continue
        if exceeds_token_budget(model, cfg.eval.mode, *image.shape[:2], cfg.eval.max_tokens):
            log.warning(
                "%s: %dx%d px is above eval.max_tokens=%d in original mode; predicting it in sliding windows of %d px",
                sample.image,
                image.shape[1],
                image.shape[0],
                cfg.eval.max_tokens,
                window,
            )
        batch = (pair_tensor(before, image) if pairs else normalize(Image.fromarray(image))).unsqueeze(0).to(device)
        logits = predict_image(
            model,
            batch,
            cfg.eval.mode,
            window,
            cfg.eval.stride_ratio,
            cfg.eval.batch_size,
            cfg.eval.max_tokens,
            progress,
        )
        labels = logits.argmax(dim=1)[0].cpu().numpy()
        stem = Path(sample.name).with_suffix("").as_posix().replace("/", "__")
        label_file = Image.fromarray((labels * CHANGED).astype(np.uint8)) if pairs else label_png(labels, colours)
        _save_atomic(label_file, output_dir / "labels" / f"{stem}.png")
        figure = overlay_figure(image, labels, colours, names, _read_truth(sample, nclass, pairs), before)
        # 4:4:4 chroma: the default 4:2:0 smears the tints and the legend's text.
        _save_atomic(figure, output_dir / "overlays" / f"{stem}.jpg", quality=92, subsampling=0)
        written.append(output_dir / "overlays" / f"{stem}.jpg")
    if skipped:
        raise DataError(
            f"{len(skipped)} of {len(samples)} images could not be decoded and were skipped "
            f"({', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}); the other {len(written)} "
            f"predictions are in {output_dir}"
        )
    return written
