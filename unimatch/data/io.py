"""Reading images and label masks into numpy arrays, with errors that name the file.

Conversions (documented behaviour):
- grayscale (``L``, ``1``) images are replicated to three channels;
- images with alpha (``RGBA``, ``LA``, palette with transparency) are composited on black;
- 16-bit / 32-bit integer images (``I;16*``, ``I``) are clipped to 0..65535 and scaled to 8 bits (/257);
- masks: palette PNGs give the palette INDEX (Pascal VOC style), single-channel images their value;
  colour masks are rejected because a colour-to-class mapping would be a guess.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError

IGNORE_INDEX = 255
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
MASK_MODES = ("P", "L", "1", *_SIXTEEN_BIT_MODES)
# What PIL raises on unreadable, truncated or hostile files.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _open(path: str | Path) -> Image.Image:
    """Open and fully decode ``path`` (``load()`` so truncation is detected here, not later)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        image = Image.open(path)
        image.load()
    except DECODE_ERRORS as error:
        raise DataError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error
    return image


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:].astype(np.uint16)
    return ((rgba[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """The image at ``path`` as an (H, W, 3) uint8 RGB array."""
    image = _open(path)
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        gray = ((values + 128) // 257).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        raise DataError(f"{path}: floating-point images are not supported")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return _composite_on_black(np.asarray(image.convert("RGBA")))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def read_mask(path: str | Path, nclass: int) -> np.ndarray:
    """The label mask at ``path`` as an (H, W) uint8 array with values in [0, nclass) or 255 (ignore)."""
    image = _open(path)
    if image.mode not in MASK_MODES:
        raise DataError(
            f"{path}: mask has mode {image.mode}; expected a single-channel (L) or palette (P) PNG of class indices"
        )
    values = np.asarray(image).astype(np.int64)
    bad = np.unique(values[((values >= nclass) & (values != IGNORE_INDEX)) | (values < 0)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10])
        raise DataError(f"{path}: label values {shown} are not classes 0..{nclass - 1} or {IGNORE_INDEX} (ignore)")
    return values.astype(np.uint8)


def read_pair(image_path: str | Path, mask_path: str | Path, nclass: int) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask, checked to have the same size."""
    image, mask = read_image(image_path), read_mask(mask_path, nclass)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]}, "
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH)"
        )
    return image, mask
