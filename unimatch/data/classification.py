"""Image classification data (SPEC §9): the benchmarks' standard on-disk formats read without downloading,
per-class labeled splits, and the training / evaluation datasets with FixMatch's weak and strong views.

Formats (``dataset.name``): ``cifar10`` (python pickles ``data_batch_1..5``, ``test_batch``), ``svhn``
(``train_32x32.mat``, ``test_32x32.mat``; label 10 is digit 0), ``stl10`` (``train_X.bin``/``train_y.bin``,
``test_*``, ``unlabeled_X.bin``), ``imagenet-folder`` (``train/<class>/*``, ``val/<class>/*``; the labeled
subset of Table 18 is a label-fraction list given as ``dataset.labeled_split``) and ``embedded-cls``, the
project's generated default in the CIFAR-10 format (:mod:`unimatch.data.classification_embedded`).

A sample is named by an id that split files list: ``<subset>/<index>`` in the array formats, the path
relative to the root in a class-folder tree. A split file holds one ``ID LABEL`` line per sample.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from ..utils.atomic import write_text_atomic
from ..utils.registry import Registry
from .errors import DataError
from .layouts import IMAGE_SUFFIXES
from .transforms import IMAGENET_MEAN, IMAGENET_STD

SUBSETS = ("train", "test", "unlabeled")  # unlabeled: STL-10's extra pool (other formats have none)
UNKNOWN = -1  # the label of an image without one (STL-10's unlabeled pool)
CIFAR_ROW = 3 * 32 * 32
STL_ROW = 3 * 96 * 96


@dataclass
class ClassificationSubset:
    """The images of one subset: ids, labels (``UNKNOWN`` where none) and a loader of image ``i`` (HWC uint8 RGB)."""

    names: list[str]
    labels: np.ndarray  # int64
    load: Callable[[int], np.ndarray]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def _arrays(images: np.ndarray, labels: np.ndarray, subset: str, class_names: list[str]) -> ClassificationSubset:
    names = [f"{subset}/{index:06d}" for index in range(len(labels))]
    return ClassificationSubset(names, labels.astype(np.int64), lambda i: images[i], class_names)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing ({what})")
    return path


# ----------------------------------------------------------------------------- CIFAR-10 (and embedded-cls)
def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) of one CIFAR-10 python batch file."""
    _require(path, "a CIFAR-10 python batch: data_batch_1..5, test_batch")
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: corrupt or truncated CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2 or data.shape[1] != CIFAR_ROW or len(data) != len(labels):
        raise DataError(
            f"{path}: corrupt CIFAR-10 batch: data {data.shape}, {len(labels)} labels "
            f"(expected (N, {CIFAR_ROW}) and N labels)"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_names(root: Path, nclass: int) -> list[str]:
    meta = root / "batches.meta"
    if not meta.is_file():
        return [f"class_{index}" for index in range(nclass)]
    try:
        with meta.open("rb") as handle:
            names = pickle.load(handle, encoding="bytes")[b"label_names"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{meta}: corrupt CIFAR-10 metadata ({type(exc).__name__}: {exc})") from None
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def read_cifar10(root: Path, subset: str) -> ClassificationSubset:
    files = [f"data_batch_{i}" for i in range(1, 6)] if subset == "train" else ["test_batch"]
    if subset == "unlabeled":
        return _arrays(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), subset, [])
    parts = [read_cifar_batch(root / name) for name in files]
    images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    names = _cifar_names(root, int(labels.max(initial=0)) + 1)
    _check_labels(labels, len(names), root / files[0])
    return _arrays(images, labels, subset, names)


def _check_labels(labels: np.ndarray, nclass: int, path: Path) -> None:
    known = labels[labels != UNKNOWN]
    if known.size and (known.min() < 0 or known.max() >= nclass):
        raise DataError(f"{path}: labels {known.min()}..{known.max()} outside 0..{nclass - 1}")


# ----------------------------------------------------------------------------- SVHN
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def read_svhn(root: Path, subset: str) -> ClassificationSubset:
    """SVHN's cropped digits: X (32, 32, 3, N), y (N, 1) in 1..10, where 10 is the digit 0."""
    if subset == "unlabeled":  # extra_32x32.mat is a labeled set; the benchmark does not use it
        return _arrays(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), subset, [])
    path = _require(root / SVHN_FILES[subset], "SVHN cropped digits: train_32x32.mat, test_32x32.mat")
    try:
        mat = scipy.io.loadmat(path)
        images, digits = np.asarray(mat["X"], dtype=np.uint8), np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except (ValueError, OSError, KeyError, TypeError, scipy.io.matlab.MatReadError) as exc:
        raise DataError(f"{path}: corrupt or truncated SVHN file ({type(exc).__name__}: {exc})") from None
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(digits):
        raise DataError(f"{path}: X {images.shape} and y ({len(digits)},) are not (32, 32, 3, N) and (N,)")
    if digits.size and (digits.min() < 1 or digits.max() > 10):
        raise DataError(f"{path}: labels {digits.min()}..{digits.max()} outside 1..10")
    return _arrays(images.transpose(3, 0, 1, 2), digits % 10, subset, [str(d) for d in range(10)])


# ----------------------------------------------------------------------------- STL-10
def _stl_images(path: Path) -> np.ndarray:
    """(N, 96, 96, 3) view of an STL-10 image file (column-major 3x96x96 per image), memory-mapped."""
    _require(path, "STL-10 binaries: train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin")
    size = path.stat().st_size
    if size == 0 or size % STL_ROW:
        raise DataError(f"{path}: truncated STL-10 image file ({size} bytes, not a multiple of {STL_ROW})")
    return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)


def read_stl10(root: Path, subset: str) -> ClassificationSubset:
    images = _stl_images(root / f"{subset}_X.bin")
    names_file = root / "class_names.txt"
    names = names_file.read_text().split() if names_file.is_file() else [f"class_{i}" for i in range(10)]
    if subset == "unlabeled":
        return _arrays(images, np.full(len(images), UNKNOWN), subset, names)
    labels_path = _require(root / f"{subset}_y.bin", f"the labels of {subset}_X.bin")
    labels = np.fromfile(labels_path, dtype=np.uint8).astype(np.int64)
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images of {subset}_X.bin")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"{labels_path}: labels {labels.min()}..{labels.max()} outside 1..10")
    return _arrays(images, labels - 1, subset, names)


# ----------------------------------------------------------------------------- ImageNet-style class folders
FOLDER_SUBSETS = {"train": "train", "test": "val"}


def read_image_folders(root: Path, subset: str) -> ClassificationSubset:
    """``<root>/train/<class>/<image>`` and ``<root>/val/<class>/<image>``; classes are the sorted folder names."""
    if subset == "unlabeled":
        return ClassificationSubset([], np.zeros(0, np.int64), lambda i: np.zeros(0), [])
    folder = root / FOLDER_SUBSETS[subset]
    if not folder.is_dir():
        raise DataError(f"{folder}: missing (an ImageNet-style tree: train/<class>/*, val/<class>/*)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((folder / name).glob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(f"{folder}: no images in class folders")

    def load(index: int) -> np.ndarray:
        path = files[index][0]
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except OSError as exc:
            raise DataError(f"{path}: unreadable image ({exc})") from None

    names = [path.relative_to(root).as_posix() for path, _ in files]
    return ClassificationSubset(names, np.array([label for _, label in files], np.int64), load, classes)


def read_fraction_list(path: str | Path, train: ClassificationSubset) -> np.ndarray:
    """Indices into ``train`` of a label-fraction list (SimMatch's ``10percent.txt``: one file name per line,
    bare or relative to the root)."""
    path = Path(path)
    _require(path, "a label-fraction list: one training image file name per line")
    by_name = {name.rsplit("/", 1)[-1]: index for index, name in enumerate(train.names)}
    by_name.update({name: index for index, name in enumerate(train.names)})
    indices = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        entry = line.split()[0] if line.strip() else ""
        if not entry:
            continue
        if entry not in by_name:
            raise DataError(f"{path}:{number}: {entry} is not an image of the training folders")
        indices.append(by_name[entry])
    if not indices:
        raise DataError(f"{path}: empty label-fraction list")
    return np.array(indices, np.int64)


READERS: Registry[Callable[[Path, str], ClassificationSubset]] = Registry("classification format")
READERS.update(
    {
        "cifar10": read_cifar10,
        "svhn": read_svhn,
        "stl10": read_stl10,
        "imagenet-folder": read_image_folders,
        "embedded-cls": read_cifar10,  # the generated default is written in CIFAR-10's format
    }
)


def read_subset(name: str, root: str | Path, subset: str) -> ClassificationSubset:
    """Subset ``subset`` (train, test, unlabeled) of the classification dataset ``name`` under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset.root: {root} is not a folder")
    return READERS.entry(name)(root, subset)


# ----------------------------------------------------------------------------- splits
def per_class_split(labels: np.ndarray, labeled: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labeled, unlabeled) indices: ``labeled`` images of every class (>= 1) or that fraction of each
    class (< 1), drawn with ``seed``; the unlabeled images are all the others."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels[labels != UNKNOWN]):
        members = np.flatnonzero(labels == label)
        count = int(labeled) if labeled >= 1 else max(1, round(labeled * len(members)))
        if count > len(members):
            raise DataError(f"split.labeled: {count} per class, but class {label} has {len(members)} images")
        chosen.append(rng.choice(members, count, replace=False))
    picked = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), picked)
    return picked, rest


def write_split(path: Path, subset: ClassificationSubset, indices: Sequence[int]) -> None:
    """``ID LABEL`` lines, written atomically; an identical file is left untouched."""
    write_text_atomic(path, "".join(f"{subset.names[i]} {subset.labels[i]}\n" for i in indices))


def read_split(path: str | Path, subset: ClassificationSubset) -> np.ndarray:
    """Indices into ``subset`` of the ids a split file lists (their labels must agree with the dataset's)."""
    path = Path(path)
    _require(path, "a classification split: ID LABEL per line")
    position = {name: index for index, name in enumerate(subset.names)}
    indices = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if fields[0] not in position:
            raise DataError(f"{path}:{number}: {fields[0]} is not a sample of the dataset")
        index = position[fields[0]]
        if len(fields) > 1 and int(fields[1]) != subset.labels[index]:
            raise DataError(f"{path}:{number}: label {fields[1]}, the dataset says {subset.labels[index]}")
        indices.append(index)
    return np.array(indices, np.int64)


# ----------------------------------------------------------------------------- datasets
def weak_transform(size: int) -> T.Compose:
    """FixMatch's weak view: horizontal flip and a translation of up to 12.5 % (reflect-padded random crop)."""
    return T.Compose(
        [
            T.Resize((size, size), antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomCrop(size, padding=int(size * 0.125), padding_mode="reflect"),
        ]
    )


def strong_transform(size: int) -> T.Compose:
    """The strong view: the weak one, then RandAugment (2 operations) and Cutout (a grey square of up to half
    the side, torchvision's RandomErasing on the [0, 1] image)."""
    return T.Compose(
        [
            weak_transform(size),
            T.RandAugment(num_ops=2, magnitude=10),
            T.ToTensor(),
            T.RandomErasing(p=1.0, scale=(0.01, 0.25), ratio=(1.0, 1.0), value=0.5),
        ]
    )


_NORMALISE = T.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist())
_TO_TENSOR = T.ToTensor()


def _pil(subset: ClassificationSubset, index: int) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(subset.load(index)))


def _label_map(label: int, height: int = 1, width: int = 1) -> torch.Tensor:
    """An image-level label as the engine's target: a constant (height, width) mask (1 x 1 in training)."""
    return torch.full((height, width), int(label), dtype=torch.int64)


class ClassificationLabeled(Dataset):
    """(weak view, label as a 1 x 1 mask) of the labeled images."""

    def __init__(self, subset: ClassificationSubset, indices: Sequence[int], size: int):
        self.subset, self.indices, self.weak = subset, list(indices), weak_transform(size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.indices[item]
        image = _NORMALISE(_TO_TENSOR(self.weak(_pil(self.subset, index))))
        return image, _label_map(self.subset.labels[index])


class ClassificationUnlabeled(Dataset):
    """(weak view, two strong views, the 1 x 1 ignore map, two empty CutMix boxes) of the unlabeled images:
    FixMatch's strong view is RandAugment + Cutout, no CutMix, so the methods' mixing leaves the views as they are."""

    def __init__(self, subset: ClassificationSubset, indices: Sequence[int], size: int):
        self.subset, self.indices = subset, list(indices)
        self.weak, self.strong = weak_transform(size), strong_transform(size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, ...]:
        image = _pil(self.subset, self.indices[item])
        weak = _NORMALISE(_TO_TENSOR(self.weak(image)))
        strong1, strong2 = _NORMALISE(self.strong(image)), _NORMALISE(self.strong(image))
        return weak, strong1, strong2, _label_map(0), _label_map(0), _label_map(0)


class ClassificationEval(Dataset):
    """(image at ``size``, its label as a constant size x size mask, id): every pixel of the evaluation's
    confusion matrix is the image's prediction, so its accuracy is the top-1 accuracy."""

    def __init__(self, subset: ClassificationSubset, indices: Sequence[int], size: int):
        self.subset, self.indices, self.resize = subset, list(indices), T.Resize((size, size), antialias=True)
        self.size = size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        index = self.indices[item]
        image = _NORMALISE(_TO_TENSOR(self.resize(_pil(self.subset, index))))
        return image, _label_map(self.subset.labels[index], self.size, self.size), self.subset.names[index]
