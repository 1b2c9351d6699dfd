"""Prediction on a folder of images: label PNGs (palette) and colour overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .data import list_image_folder, palette, read_image
from .data.transforms import normalize
from .evaluation import predict_original, predict_sliding


def overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the class colours over the image; background (class 0) stays untouched."""
    tinted = image.astype(np.float32) * (1 - alpha) + colours[labels].astype(np.float32) * alpha
    blended = np.where(labels[..., None] > 0, tinted, image.astype(np.float32))
    return blended.round().astype(np.uint8)


def label_png(labels: np.ndarray, colours: np.ndarray) -> Image.Image:
    png = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(colours)] = colours
    png.putpalette(flat.flatten().tolist())
    return png


@torch.no_grad()
def predict_folder(
    model: torch.nn.Module,
    input_dir: str | Path,
    output_dir: str | Path,
    nclass: int,
    mode: str = "original",
    window: int = 518,
    stride_ratio: float = 2 / 3,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write ``labels/NAME.png`` and ``overlays/NAME.jpg`` for every image under ``input_dir``."""
    samples = list_image_folder(input_dir)[:limit]
    output_dir = Path(output_dir)
    (output_dir / "labels").mkdir(parents=True, exist_ok=True)
    (output_dir / "overlays").mkdir(parents=True, exist_ok=True)
    colours = palette(nclass)
    model.eval()
    written = []
    for sample in tqdm(samples, desc="predict", unit="img", disable=not progress):
        image = read_image(sample.image)
        batch = normalize(Image.fromarray(image)).unsqueeze(0).to(device)
        if mode == "sliding":
            logits = predict_sliding(model, batch, window, stride_ratio)
        else:
            logits = predict_original(model, batch)
        labels = logits.argmax(dim=1)[0].cpu().numpy()
        stem = Path(sample.name).with_suffix("").as_posix().replace("/", "__")
        label_png(labels, colours).save(output_dir / "labels" / f"{stem}.png")
        Image.fromarray(overlay(image, labels, colours)).save(output_dir / "overlays" / f"{stem}.jpg", quality=90)
        written.append(output_dir / "overlays" / f"{stem}.jpg")
    return written
