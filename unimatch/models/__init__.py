"""DINOv2-DPT segmentor and checkpoint loading."""

from .encoder import ENCODER_SPECS, PATCH_SIZE, DINOv2Encoder, interpolate_pos_embed
from .segmentor import Segmentor, build_segmentor, complementary_masks
from .weights import CheckpointError, load_encoder_weights, load_segmentor_weights, read_checkpoint

__all__ = [
    "ENCODER_SPECS",
    "PATCH_SIZE",
    "CheckpointError",
    "DINOv2Encoder",
    "Segmentor",
    "build_segmentor",
    "complementary_masks",
    "interpolate_pos_embed",
    "load_encoder_weights",
    "load_segmentor_weights",
    "read_checkpoint",
]
