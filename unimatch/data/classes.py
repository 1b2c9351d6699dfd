"""Class names and the colour palette used to draw masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..settings import DatasetSettings
from .errors import DataError

PASCAL_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
_BUILT_IN = {"pascal": PASCAL_CLASSES, "cityscapes": CITYSCAPES_CLASSES}
NAMES_FILE = "classes.txt"


def _names_file(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: class-name file is not UTF-8") from error


def class_names(dataset: DatasetSettings | str, root: str | Path | None = None, nclass: int | None = None) -> list[str]:
    """Names of the ``nclass`` classes: built in for pascal and cityscapes, else ``ROOT/classes.txt``
    (one name per line) when present, else ``class_0``, ``class_1``, ..."""
    name: str
    if isinstance(dataset, DatasetSettings):
        name, root, nclass = dataset.name, dataset.root, dataset.nclass
    else:
        name = dataset
    if nclass is None:
        raise DataError("class_names: nclass is required with a dataset name")
    names_file = Path(root) / NAMES_FILE if root is not None else None
    if name in _BUILT_IN:
        names, source = list(_BUILT_IN[name]), f"the {name} class list"
    elif names_file is not None and names_file.is_file():
        names, source = _names_file(names_file), str(names_file)
    else:
        return [f"class_{index}" for index in range(nclass)]
    if len(names) != nclass:
        raise DataError(f"dataset.nclass: {nclass} classes configured but {source} has {len(names)}")
    return names


def palette(nclass: int) -> np.ndarray:
    """An (nclass, 3) uint8 colour map: the Pascal VOC bit-interleaving algorithm (class 0 black)."""
    colours = np.zeros((nclass, 3), dtype=np.uint8)
    for index in range(nclass):
        code, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        colours[index] = (red, green, blue)
    return colours
