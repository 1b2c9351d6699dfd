"""MiT-B5 (SegFormer's encoder) from segmentation-models-pytorch: not in timm; smp's definition keeps the
official key names, so NVlabs' ``mit_b5.pth`` loads strictly (its ImageNet head dropped). Also a CPU-sized
MiT of the same definition for tests and the embedded data."""

from __future__ import annotations

from functools import partial

import torch
from segmentation_models_pytorch.encoders import get_encoder
from segmentation_models_pytorch.encoders.mix_transformer import LayerNorm, MixVisionTransformerEncoder
from torch import nn

from .base import Encoder, FeatureLevel, register_encoder
from .timm_family import LARGE_HEAD, TABLE9_LR, WrappedEncoder


class MiTEncoder(WrappedEncoder):
    unused_keys = ("head.",)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # smp returns the input and an empty stride-2 map before the four stages (strides 4, 8, 16, 32).
        self.feature_info = tuple(FeatureLevel(c, 2 ** (i + 2)) for i, c in enumerate(self.model.out_channels[2:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x)[2:])


@register_encoder(
    "mit-b5",
    summary="MiT-B5 (SegFormer) from segmentation-models-pytorch",
    size_divisor=32,
    weights_hint="mit_b5.pth (NVlabs SegFormer layout)",
    **LARGE_HEAD,
    **TABLE9_LR,
)
def mit_b5(input_size: int) -> Encoder:
    return MiTEncoder(get_encoder("mit_b5", weights=None))


# SPEC §12's CPU size: MiT-B5's layout with widths 8..64 and one block per stage; random init, so it trains
# at from-scratch rates (like resnet-tiny).
@register_encoder(
    "mit-tiny",
    summary="MiT, 8..64 wide, 1 block per stage (CPU)",
    size_divisor=32,
    decoder_features=32,
    decoder_channels=(24, 48, 96, 96),
    lr=1e-3,
    lr_multiplier=1.0,
    cpu_sized=True,
)
def mit_tiny(input_size: int) -> Encoder:
    return MiTEncoder(
        MixVisionTransformerEncoder(
            out_channels=[3, 0, 8, 16, 32, 64],
            embed_dims=[8, 16, 32, 64],
            num_heads=[1, 2, 4, 8],
            mlp_ratios=[4, 4, 4, 4],
            qkv_bias=True,
            norm_layer=partial(LayerNorm, eps=1e-6),
            depths=[1, 1, 1, 1],
            sr_ratios=[8, 4, 2, 1],
            drop_rate=0.0,
            drop_path_rate=0.1,
        )
    )
