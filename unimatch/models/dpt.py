"""DPT decoder (registered as ``dpt``): reassemble four encoder feature maps into a pyramid and fuse it
coarse-to-fine (RefineNet style)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import DecoderSettings
from .decoders.base import Decoder, register_decoder
from .encoders import EncoderEntry, FeatureLevel


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int, use_bn: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=not use_bn)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=not use_bn)
        self.bn1 = nn.BatchNorm2d(features) if use_bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(features) if use_bn else nn.Identity()
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(self.activation(x)))
        out = self.bn2(self.conv2(self.activation(out)))
        return out + x


class FeatureFusionBlock(nn.Module):
    """Adds the refined skip connection, refines, upsamples x2 (or to ``size``) and projects."""

    def __init__(self, features: int, use_bn: bool):
        super().__init__()
        # The coarsest block never receives a skip input, but the released checkpoints carry
        # resConfUnit1 for it too, so every block keeps the same layout.
        self.resConfUnit1 = ResidualConvUnit(features, use_bn)
        self.resConfUnit2 = ResidualConvUnit(features, use_bn)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    """Named like the reference implementation so released checkpoints load without key renaming."""

    def __init__(self, out_channels: Sequence[int], features: int, use_bn: bool):
        super().__init__()
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = (
            nn.Conv2d(channels, features, 3, padding=1, bias=False) for channels in out_channels
        )
        self.refinenet1, self.refinenet2, self.refinenet3, self.refinenet4 = (
            FeatureFusionBlock(features, use_bn) for _ in range(4)
        )
        self.output_conv = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1),
            nn.ReLU(True),
        )


def resize_layer(channels: int, factor: float) -> nn.Module:
    """Bring one level to its pyramid stride: x4 / x2 transposed convolutions, identity, or a stride-2 conv."""
    if factor == 4:
        return nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=4)
    if factor == 2:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if factor == 1:
        return nn.Identity()
    if factor == 0.5:
        return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
    raise ValueError(f"DPT cannot resize a feature level by {factor}; levels must be within 4x of the pyramid")


def pyramid_factors(levels: Sequence[FeatureLevel]) -> list[float]:
    """Upsampling factor of each level towards strides (S/4, S/2, S, 2S), S = the third level's stride.

    A plain ViT (every level at its patch stride) gets DPT's x4, x2, 1, 1/2; a hierarchical encoder
    (strides 4, 8, 16, 32) is a pyramid already and keeps its maps as they are."""
    anchor = levels[2].stride
    targets = (anchor / 4, anchor / 2, anchor, anchor * 2)
    return [level.stride / target for level, target in zip(levels, targets)]


class DPTHead(Decoder):
    def __init__(
        self,
        nclass: int,
        levels: Sequence[FeatureLevel],
        features: int,
        out_channels: Sequence[int],
        use_bn: bool = False,
    ):
        super().__init__()
        if len(levels) != 4:
            raise ValueError(f"DPT fuses four feature levels, the encoder declares {len(levels)}")
        self.projects = nn.ModuleList(
            nn.Conv2d(level.channels, channels, 1) for level, channels in zip(levels, out_channels)
        )
        self.resize_layers = nn.ModuleList(
            resize_layer(channels, factor) for channels, factor in zip(out_channels, pyramid_factors(levels))
        )
        self.scratch = Scratch(out_channels, features, use_bn)
        self.classifier = nn.Conv2d(features, nclass, 1)

    def fuse(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Four (B, C_i, h_i, w_i) encoder maps -> fused decoder features at twice the finest pyramid level."""
        pyramid = [resize(project(x)) for x, project, resize in zip(maps, self.projects, self.resize_layers)]
        scratch = self.scratch
        layer1, layer2, layer3, layer4 = (
            conv(x)
            for conv, x in zip((scratch.layer1_rn, scratch.layer2_rn, scratch.layer3_rn, scratch.layer4_rn), pyramid)
        )
        path = scratch.refinenet4(layer4, size=layer3.shape[2:])
        path = scratch.refinenet3(path, layer3, size=layer2.shape[2:])
        path = scratch.refinenet2(path, layer2, size=layer1.shape[2:])
        path = scratch.refinenet1(path, layer1)
        return scratch.output_conv(path)


@register_decoder("dpt", "DPT (UniMatch V2's decoder): four levels, widths declared by the encoder")
def dpt(
    nclass: int, levels: Sequence[FeatureLevel], encoder: EncoderEntry, settings: DecoderSettings, use_bn: bool
) -> Decoder:
    return DPTHead(nclass, levels, encoder.decoder_features, encoder.decoder_channels, use_bn)
