"""DINOv2 vision transformers from timm's own model definitions, with the official positional-embedding rule.

The encoder keeps timm's modules under DINOv2's released key names (``cls_token``, ``pos_embed``,
``patch_embed``, ``blocks``, ``norm``), so official files, the authors' UniMatch V2 checkpoints and this
project's own load strictly after timm's DINOv2 conversion (SwiGLU ``w12``/``w3`` -> ``fc1``/``fc2``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from .base import Encoder, FeatureLevel, register_encoder

PATCH_SIZE = 14
PRETRAIN_GRID = 37  # DINOv2 positional embeddings were trained at 518 = 37 * 14
INTERPOLATE_OFFSET = 0.1  # the official "+0.1" that keeps floor(scale * 37) == target grid


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize a (1, 1 + N, D) class+patch table to a grid_h x grid_w patch grid the way DINOv2 does.

    Bicubic without antialias, driven by a scale factor (grid + 0.1) / sqrt(N) rather than a target
    size: the sampling positions differ from ``size=`` resizing, and the released weights expect these.
    """
    num_patches = pos_embed.shape[1] - 1
    if num_patches == grid_h * grid_w and grid_h == grid_w:
        return pos_embed
    side = int(math.sqrt(num_patches))
    dim = pos_embed.shape[-1]
    class_pos, patch_pos = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = ((grid_h + INTERPOLATE_OFFSET) / side, (grid_w + INTERPOLATE_OFFSET) / side)
    patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=False)
    if patch_pos.shape[-2:] != (grid_h, grid_w):
        raise RuntimeError(
            f"positional embedding resized to {tuple(patch_pos.shape[-2:])}, expected {(grid_h, grid_w)}"
        )
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat((class_pos, patch_pos), dim=1).to(pos_embed.dtype)


class DINOv2Encoder(Encoder):
    """The blocks of a timm DINOv2 ViT; features are the outputs of ``layer_indices`` after the final norm,
    class token removed, as (B, D, H/14, W/14) maps."""

    unused_keys = ("mask_token",)  # masked-image-modelling token: pre-training only

    def __init__(self, vit: VisionTransformer, layer_indices: tuple[int, ...]):
        super().__init__()
        self.cls_token, self.pos_embed, self.patch_embed = vit.cls_token, vit.pos_embed, vit.patch_embed
        self.blocks, self.norm = vit.blocks, vit.norm
        self.embed_dim, self.num_prefix_tokens = vit.embed_dim, 1
        self.layer_indices = layer_indices
        self.feature_info = tuple(FeatureLevel(vit.embed_dim, PATCH_SIZE) for _ in layer_indices)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Patch tokens with the class token and DINOv2's interpolated positions: (B, 1 + h*w, D), h, w."""
        height, width = x.shape[-2:]
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of the encoder's size divisor {PATCH_SIZE}"
            )
        patches = self.patch_embed(x)  # (B, h, w, D): timm's dynamic-size patch embedding is channels-last
        batch, grid_h, grid_w, dim = patches.shape
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), patches.reshape(batch, -1, dim)), dim=1)
        return tokens + interpolate_pos_embed(self.pos_embed, grid_h, grid_w), grid_h, grid_w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens, grid_h, grid_w = self.embed(x)
        wanted = set(self.layer_indices)
        maps = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in wanted:
                patch = self.norm(tokens)[:, 1:]
                # A (B, D, h, w) view with channels-last strides: the decoder's convolutions run channels-last.
                maps.append(patch.transpose(1, 2).reshape(patch.shape[0], patch.shape[-1], grid_h, grid_w))
            if index == self.layer_indices[-1]:
                break
        return maps

    def convert_checkpoint(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Official ``dinov2_vit*14_pretrain.pth`` (or timm-layout) weights, through timm's own DINOv2 filter."""
        state = dict(state)
        state.setdefault("mask_token", torch.zeros(1, self.embed_dim))  # timm's filter keys its DINOv2 branch on it
        return self.drop_unused(checkpoint_filter_fn(state, self))

    def compile_blocks(self) -> None:
        for block in self.blocks:
            block.compile()


def dinov2(timm_name: str, layer_indices: tuple[int, ...]) -> DINOv2Encoder:
    vit = timm.create_model(
        timm_name, pretrained=False, num_classes=0, dynamic_img_size=True, img_size=PRETRAIN_GRID * PATCH_SIZE
    )
    return DINOv2Encoder(vit, layer_indices)


DINOV2 = dict(size_divisor=PATCH_SIZE, lr=5e-6, lr_multiplier=40.0)  # the paper's fine-tuning recipe
HUB = ("facebookresearch/dinov2",)


@register_encoder(
    "small",
    summary="DINOv2 ViT-S/14",
    decoder_features=64,
    decoder_channels=(48, 96, 192, 384),
    weights_hint="dinov2_vits14_pretrain.pth",
    hub=HUB + ("dinov2_vits14",),
    **DINOV2,
)
def dinov2_small(input_size: int) -> Encoder:
    return dinov2("vit_small_patch14_dinov2", (2, 5, 8, 11))


@register_encoder(
    "base",
    summary="DINOv2 ViT-B/14",
    decoder_features=128,
    decoder_channels=(96, 192, 384, 768),
    weights_hint="dinov2_vitb14_pretrain.pth",
    hub=HUB + ("dinov2_vitb14",),
    **DINOV2,
)
def dinov2_base(input_size: int) -> Encoder:
    return dinov2("vit_base_patch14_dinov2", (2, 5, 8, 11))


@register_encoder(
    "large",
    summary="DINOv2 ViT-L/14",
    decoder_features=256,
    decoder_channels=(256, 512, 1024, 1024),
    weights_hint="dinov2_vitl14_pretrain.pth",
    hub=HUB + ("dinov2_vitl14",),
    **DINOV2,
)
def dinov2_large(input_size: int) -> Encoder:
    return dinov2("vit_large_patch14_dinov2", (4, 11, 17, 23))


@register_encoder(
    "giant",
    summary="DINOv2 ViT-g/14 (SwiGLU)",
    decoder_features=384,
    decoder_channels=(1536,) * 4,
    weights_hint="dinov2_vitg14_pretrain.pth",
    hub=HUB + ("dinov2_vitg14",),
    **DINOV2,
)
def dinov2_giant(input_size: int) -> Encoder:
    return dinov2("vit_giant_patch14_dinov2", (9, 19, 29, 39))


# Not a DINOv2 release: DINOv2's layout at CPU size. The embedded world's foundation weights are for it;
# fine-tuned at 1e-4 with the decoder at 10x (measured on the embedded benchmark, README).
@register_encoder(
    "tiny",
    summary="DINOv2-layout ViT, 96 wide, 4 blocks (CPU)",
    decoder_features=32,
    decoder_channels=(24, 48, 96, 96),
    size_divisor=PATCH_SIZE,
    lr=1e-4,
    lr_multiplier=10.0,
    cpu_sized=True,
    weights_hint="weights/foundation/embedded-tiny.pth",
)
def tiny_vit(input_size: int) -> Encoder:
    vit = VisionTransformer(
        img_size=PRETRAIN_GRID * PATCH_SIZE,
        patch_size=PATCH_SIZE,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=4.0,
        init_values=1.0,
        num_classes=0,
        dynamic_img_size=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    return DINOv2Encoder(vit, (0, 1, 2, 3))
