"""Semi-supervised methods on one shared engine: each defines the losses of one training step and
registers itself (``register_method``); importing this package registers them all."""

from __future__ import annotations

from torch import nn

from ..settings import MethodSettings
from .base import (
    METHODS,
    LabeledBatch,
    Method,
    Progress,
    PseudoLabels,
    StepLosses,
    UnlabeledBatch,
    cutmix_images,
    cutmix_pseudo,
    method_class,
    pixel_loss,
    pseudo_label,
    register_method,
)

# Registration order is the report's row order.
from .labeled_only import LabeledOnly  # isort: skip
from .fixmatch import FixMatch  # isort: skip
from .unimatch_v1 import UniMatchV1  # isort: skip
from .unimatch_v2 import UniMatchV2  # isort: skip
from .allspark import AllSpark  # isort: skip
from .st import SelfTraining, SelfTrainingPlusPlus  # isort: skip
from .semivl import SemiVL  # isort: skip


def build_method(settings: MethodSettings, labeled_loss: nn.Module) -> Method:
    return method_class(settings.name)(settings, labeled_loss)


def single_training_methods() -> list[str]:
    """The methods one training from a config runs (not those trained in stages, like ST)."""
    return [name for name, cls in METHODS.items() if not cls.staged]


def method_labels() -> dict[str, str]:
    """Report row labels, in registration order (labeled-only first)."""
    return {name: cls.label for name, cls in METHODS.items()}


__all__ = [
    "METHODS",
    "AllSpark",
    "FixMatch",
    "LabeledBatch",
    "LabeledOnly",
    "Method",
    "Progress",
    "PseudoLabels",
    "SelfTraining",
    "SelfTrainingPlusPlus",
    "SemiVL",
    "StepLosses",
    "UniMatchV1",
    "UniMatchV2",
    "UnlabeledBatch",
    "build_method",
    "cutmix_images",
    "cutmix_pseudo",
    "method_class",
    "method_labels",
    "single_training_methods",
    "pixel_loss",
    "pseudo_label",
    "register_method",
]
