"""Segmentors (a registered encoder + DPT decoder) and checkpoint loading."""

from .encoders import ENCODERS, DINOv2Encoder, Encoder, EncoderEntry, FeatureLevel, encoder_entry, interpolate_pos_embed
from .segmentor import Segmentor, build_segmentor, complementary_masks
from .weights import CheckpointError, load_encoder_weights, load_segmentor_weights, read_checkpoint

__all__ = [
    "ENCODERS",
    "CheckpointError",
    "DINOv2Encoder",
    "Encoder",
    "EncoderEntry",
    "FeatureLevel",
    "Segmentor",
    "build_segmentor",
    "complementary_masks",
    "encoder_entry",
    "interpolate_pos_embed",
    "load_encoder_weights",
    "load_segmentor_weights",
    "read_checkpoint",
]
