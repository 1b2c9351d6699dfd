"""Data layer: image/mask I/O, split files, dataset layouts, augmentations, torch datasets and the
embedded default dataset. Every bad input raises :class:`DataError` naming the file (and line) or key."""

from .check import DataCheck, check_samples, check_training_data
from .classes import CITYSCAPES_CLASSES, PASCAL_CLASSES, class_names, palette
from .datasets import EvalDataset, LabeledDataset, StrongLabeledDataset, UnlabeledDataset
from .embedded import CLASSES as EMBEDDED_CLASSES
from .embedded import generate_embedded
from .errors import DataError
from .io import IGNORE_INDEX, read_image, read_mask, read_pair
from .layouts import list_dataset, list_image_folder
from .splits import Sample, check_disjoint, create_split, read_pseudo_labels, read_split, write_split
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LABELED_PAD,
    UNLABELED_PAD,
    augment,
    check_crop_size,
    cutmix_box,
    cutout,
    normalize,
    strong,
    strong_pipeline,
    weak,
    weak_pipeline,
)

__all__ = [
    "CITYSCAPES_CLASSES",
    "EMBEDDED_CLASSES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABELED_PAD",
    "PASCAL_CLASSES",
    "UNLABELED_PAD",
    "DataCheck",
    "DataError",
    "EvalDataset",
    "LabeledDataset",
    "Sample",
    "StrongLabeledDataset",
    "UnlabeledDataset",
    "augment",
    "check_crop_size",
    "check_samples",
    "check_training_data",
    "check_disjoint",
    "class_names",
    "create_split",
    "cutmix_box",
    "cutout",
    "generate_embedded",
    "list_dataset",
    "list_image_folder",
    "normalize",
    "palette",
    "read_image",
    "read_mask",
    "read_pair",
    "read_pseudo_labels",
    "read_split",
    "strong",
    "strong_pipeline",
    "weak",
    "weak_pipeline",
    "write_split",
]
