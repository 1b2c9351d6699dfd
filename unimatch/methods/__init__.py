"""Semi-supervised methods on one shared engine: each defines the losses of one training step."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import MethodConfig
from .base import LabeledBatch, Method, PseudoLabels, StepLosses, UnlabeledBatch, cutmix_images, cutmix_pseudo, pixel_loss, pseudo_label
from .fixmatch import FixMatch
from .labeled_only import LabeledOnly
from .unimatch_v1 import UniMatchV1
from .unimatch_v2 import UniMatchV2

METHODS: dict[str, type[Method]] = {
    "labeled_only": LabeledOnly,
    "fixmatch": FixMatch,
    "unimatch_v1": UniMatchV1,
    "unimatch_v2": UniMatchV2,
}


def build_method(cfg: MethodConfig, labeled_loss: nn.Module) -> Method:
    return METHODS[cfg.name](cfg, labeled_loss)


def method_settings(cfg: MethodConfig) -> dict[str, Any]:
    """The method section as the method sees it: its name and the fields its class reads."""
    return {name: getattr(cfg, name) for name in ("name", *METHODS[cfg.name].settings)}


__all__ = [
    "METHODS",
    "LabeledBatch",
    "Method",
    "PseudoLabels",
    "StepLosses",
    "UnlabeledBatch",
    "build_method",
    "method_settings",
    "cutmix_images",
    "cutmix_pseudo",
    "pixel_loss",
    "pseudo_label",
]
