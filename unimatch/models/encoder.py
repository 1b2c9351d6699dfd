"""DINOv2 vision transformers built on timm's ViT, with the official positional-embedding rule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

PATCH_SIZE = 14
PRETRAIN_GRID = 37  # DINOv2 positional embeddings were trained at 518 = 37 * 14
INTERPOLATE_OFFSET = 0.1  # the official "+0.1" that keeps floor(scale * 37) == target grid


@dataclass(frozen=True)
class EncoderSpec:
    embed_dim: int
    depth: int
    num_heads: int
    layer_indices: tuple[int, ...]
    swiglu: bool = False


ENCODER_SPECS: dict[str, EncoderSpec] = {
    # "tiny" is not a DINOv2 release: it runs the same code path fast enough for CPU runs and tests.
    "tiny": EncoderSpec(embed_dim=96, depth=4, num_heads=3, layer_indices=(0, 1, 2, 3)),
    "small": EncoderSpec(embed_dim=384, depth=12, num_heads=6, layer_indices=(2, 5, 8, 11)),
    "base": EncoderSpec(embed_dim=768, depth=12, num_heads=12, layer_indices=(2, 5, 8, 11)),
    "large": EncoderSpec(embed_dim=1024, depth=24, num_heads=16, layer_indices=(4, 11, 17, 23)),
    "giant": EncoderSpec(embed_dim=1536, depth=40, num_heads=24, layer_indices=(9, 19, 29, 39), swiglu=True),
}


def encoder_spec(name: str) -> EncoderSpec:
    if name not in ENCODER_SPECS:
        raise ValueError(f"unknown encoder '{name}'; choose one of {sorted(ENCODER_SPECS)}")
    return ENCODER_SPECS[name]


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
        raise RuntimeError(f"positional embedding resized to {tuple(patch_pos.shape[-2:])}, expected {(grid_h, grid_w)}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat((class_pos, patch_pos), dim=1).to(pos_embed.dtype)


class DINOv2Encoder(VisionTransformer):
    """timm ViT with DINOv2's layout (patch 14, layer scale, class token, 37x37 table) for any input size."""

    def __init__(self, name: str):
        spec = encoder_spec(name)
        extra = {"mlp_layer": SwiGLUPacked, "mlp_ratio": 2.66667 * 2} if spec.swiglu else {"mlp_ratio": 4.0}
        super().__init__(
            img_size=PRETRAIN_GRID * PATCH_SIZE,
            patch_size=PATCH_SIZE,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            init_values=1.0,
            num_classes=0,
            dynamic_img_size=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            **extra,
        )
        self.name = name
        self.layer_indices = spec.layer_indices

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        batch, grid_h, grid_w, dim = x.shape
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), x.reshape(batch, -1, dim)), dim=1)
        return tokens + interpolate_pos_embed(self.pos_embed, grid_h, grid_w)

    def get_intermediate_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Token maps (B, N, D) after the final norm, class token removed, at ``self.layer_indices``."""
        height, width = x.shape[-2:]
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(f"input size {height}x{width} is not a multiple of the patch size {PATCH_SIZE}")
        tokens = self._pos_embed(self.patch_embed(x))
        wanted = set(self.layer_indices)
        outputs = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in wanted:
                outputs.append(self.norm(tokens)[:, 1:])
            if index == self.layer_indices[-1]:
                break
        return outputs
