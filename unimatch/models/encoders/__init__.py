"""Encoders: one registry entry each (see ``base``); importing this package registers them all."""

from . import clip, dinov2, mit, timm_family  # noqa: F401  (registration)
from .base import (
    ENCODERS,
    Encoder,
    EncoderEntry,
    FeatureLevel,
    build_encoder,
    encoder_entry,
    parameter_counts,
    register_encoder,
)
from .dinov2 import DINOv2Encoder, interpolate_pos_embed

__all__ = [
    "ENCODERS",
    "DINOv2Encoder",
    "Encoder",
    "EncoderEntry",
    "FeatureLevel",
    "build_encoder",
    "encoder_entry",
    "parameter_counts",
    "interpolate_pos_embed",
    "register_encoder",
]
