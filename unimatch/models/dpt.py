"""DPT decoder: reassemble four ViT token maps into a pyramid and fuse it coarse-to-fine (RefineNet style)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


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

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None) -> torch.Tensor:
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


class DPTHead(nn.Module):
    def __init__(self, nclass: int, in_channels: int, features: int, out_channels: Sequence[int], use_bn: bool = False):
        super().__init__()
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, channels, 1) for channels in out_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = Scratch(out_channels, features, use_bn)
        self.classifier = nn.Conv2d(features, nclass, 1)

    def fuse(self, token_maps: Sequence[torch.Tensor], grid_h: int, grid_w: int) -> torch.Tensor:
        """Token maps (B, N, D) -> fused decoder features (B, features, 8*grid_h, 8*grid_w)."""
        pyramid = []
        for tokens, project, resize in zip(token_maps, self.projects, self.resize_layers):
            # A view of the (B, N, D) tokens with channels-last strides: the convolutions run channels-last.
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], grid_h, grid_w)
            pyramid.append(resize(project(x)))
        scratch = self.scratch
        layer1, layer2, layer3, layer4 = (
            conv(x) for conv, x in zip((scratch.layer1_rn, scratch.layer2_rn, scratch.layer3_rn, scratch.layer4_rn), pyramid)
        )
        path = scratch.refinenet4(layer4, size=layer3.shape[2:])
        path = scratch.refinenet3(path, layer3, size=layer2.shape[2:])
        path = scratch.refinenet2(path, layer2, size=layer1.shape[2:])
        path = scratch.refinenet1(path, layer1)
        return scratch.output_conv(path)

    def forward(self, token_maps: Sequence[torch.Tensor], grid_h: int, grid_w: int) -> torch.Tensor:
        return self.classifier(self.fuse(token_maps, grid_h, grid_w))
