"""MiT-B5 (SegFormer's encoder) from segmentation-models-pytorch: not in timm; smp's definition keeps the
official key names, so NVlabs' ``mit_b5.pth`` loads strictly (its ImageNet head dropped)."""

from __future__ import annotations

import torch
from segmentation_models_pytorch.encoders import get_encoder

from .base import Encoder, FeatureLevel, register_encoder
from .timm_family import LARGE_HEAD, TABLE9_LR, WrappedEncoder


class MiTEncoder(WrappedEncoder):
    unused_keys = ("head.",)

    def __init__(self, name: str):
        super().__init__()
        self.model = get_encoder(name, weights=None)
        # smp returns the input and an empty stride-2 map before the four stages (strides 4, 8, 16, 32).
        self.feature_info = tuple(FeatureLevel(c, 2 ** (i + 2)) for i, c in enumerate(self.model.out_channels[2:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x)[2:])


@register_encoder("mit-b5", summary="MiT-B5 (SegFormer) from segmentation-models-pytorch", size_divisor=32,
                  weights_hint="mit_b5.pth (NVlabs SegFormer layout)", **LARGE_HEAD, **TABLE9_LR)  # fmt: skip
def mit_b5(input_size: int) -> Encoder:
    return MiTEncoder("mit_b5")
