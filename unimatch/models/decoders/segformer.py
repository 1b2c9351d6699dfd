"""SegFormer's all-MLP decoder (registered as ``segformer``), as AllSpark uses it on MiT-B5 (SPEC §12): each
level projected to ``embedding_dim`` by a linear layer, upsampled to the finest level, concatenated (coarsest
first), fused by a 1x1 convolution with BatchNorm and ReLU, Dropout2d(0.1), then the 1x1 classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...settings import DecoderSettings
from ..encoders import EncoderEntry, FeatureLevel
from .base import Decoder, register_decoder


class SegFormerSettings(DecoderSettings):
    embedding_dim: int = Field(768, ge=1)  # SegFormer-B5's (AllSpark's configs); CPU-sized encoders take less


class SegFormerHead(Decoder):
    align_corners = False  # the reference resizes its logits with align_corners=False

    def __init__(self, nclass: int, levels: Sequence[FeatureLevel], embedding_dim: int):
        super().__init__()
        if len(levels) != 4:
            raise ValueError(f"the SegFormer head fuses four feature levels, the encoder declares {len(levels)}")
        self.linear_c = nn.ModuleList(nn.Linear(level.channels, embedding_dim) for level in levels)
        self.linear_fuse = nn.Sequential(
            nn.Conv2d(4 * embedding_dim, embedding_dim, 1, bias=False),
            nn.BatchNorm2d(embedding_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(embedding_dim, nclass, 1)

    def fuse(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Four (B, C_i, h_i, w_i) maps -> (B, E, h_1, w_1) features at the finest level."""
        size = maps[0].shape[-2:]
        projected = []
        for x, linear in zip(maps, self.linear_c):
            y = linear(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[-2:])
            projected.append(
                y if y.shape[-2:] == size else F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            )
        return self.dropout(self.linear_fuse(torch.cat(projected[::-1], dim=1)))


@register_decoder("segformer", "SegFormer all-MLP head (AllSpark on MiT-B5)", SegFormerSettings)
def segformer(
    nclass: int, levels: Sequence[FeatureLevel], encoder: EncoderEntry, settings: SegFormerSettings, use_bn: bool
) -> Decoder:
    return SegFormerHead(
        nclass, levels, settings.embedding_dim
    )  # BatchNorm always, as SegFormer (model.use_bn is DPT's)
