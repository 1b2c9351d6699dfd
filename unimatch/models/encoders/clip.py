"""CLIP ViT image towers with MaskCLIP's dense features (SemiVL, SPEC §13), from timm's own ViT definition.

The last block is run on MaskCLIP's value path: each patch token goes through the value and output
projections of the attention (query/key attention bypassed), the residual and the MLP, then ``ln_post``
and CLIP's projection to the joint image-text space, L2-normalised: a dense embedding comparable with
CLIP text embeddings. The value-path outputs of two early blocks are the language-guided decoder's skips.
As SemiVL's released backbone: LayerNorm eps 1e-6 and exact GELU (OpenAI trained with 1e-5 and QuickGELU).

Spatial fine-tuning: only parameters named ``attn`` (query/key/value and output projections) or
``pos_embed`` train; patch embedding, class token, LayerNorms, MLPs and the projection stay as released.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn
from torch import nn

from .base import Encoder, FeatureLevel, register_encoder

PATCH_SIZE = 16
JOINT_DIM = 512  # CLIP ViT-B/16's image-text embedding width: the text-embedding files' width
TRAINABLE = ("attn", "pos_embed")  # spatial fine-tuning: names containing one of these train
OPENAI_PREFIX = "visual."  # OpenAI's ViT-B-16.pt and open_clip's state dicts name the image tower so


def value_path(block: Block, tokens: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's block output without query/key attention: v = out_proj(v_proj(LN1(x))) + x, then + MLP(LN2(v)).
    Every token sees only itself, so the dense embedding stays local."""
    dim = tokens.shape[-1]
    qkv = block.attn.qkv
    bias = qkv.bias[2 * dim :] if qkv.bias is not None else None
    value = tokens + block.attn.proj(F.linear(block.norm1(tokens), qkv.weight[2 * dim :], bias))
    return value + block.mlp(block.norm2(value))


class CLIPEncoder(Encoder):
    """Feature maps (all at stride 16): the value-path outputs of ``skip_indices`` (width D) and the dense
    L2-normalised CLIP embedding (width ``JOINT_DIM``), last."""

    def __init__(self, vit: VisionTransformer, skip_indices: tuple[int, ...]):
        super().__init__()
        self.cls_token, self.pos_embed, self.patch_embed = vit.cls_token, vit.pos_embed, vit.patch_embed
        self.norm_pre, self.blocks, self.norm = vit.norm_pre, vit.blocks, vit.norm
        self.proj = nn.Linear(vit.embed_dim, JOINT_DIM, bias=False)  # CLIP's `proj`, applied per token
        self.num_prefix_tokens = 1
        self.skip_indices = skip_indices
        self.feature_info = tuple(FeatureLevel(vit.embed_dim, PATCH_SIZE) for _ in skip_indices) + (
            FeatureLevel(JOINT_DIM, PATCH_SIZE),
        )
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(any(key in name for key in TRAINABLE))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Class + patch tokens with positions, the table resized bicubically when the grid differs from the
        one it was built for (mmseg's resize, as SemiVL): (B, 1 + h*w, D), h, w."""
        patches = self.patch_embed(x)  # (B, h, w, D): timm's dynamic-size patch embedding is channels-last
        batch, grid_h, grid_w, dim = patches.shape
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), patches.reshape(batch, -1, dim)), dim=1)
        positions = resample_abs_pos_embed(self.pos_embed, [grid_h, grid_w], num_prefix_tokens=1, antialias=False)
        return self.norm_pre(tokens + positions), grid_h, grid_w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens, grid_h, grid_w = self.embed(x)

        def to_map(patch_tokens: torch.Tensor) -> torch.Tensor:
            return patch_tokens.transpose(1, 2).reshape(patch_tokens.shape[0], patch_tokens.shape[-1], grid_h, grid_w)

        maps, last = [], len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            if index in self.skip_indices:
                maps.append(to_map(value_path(block, tokens)[:, 1:]))
            if index < last:
                tokens = block(tokens)
        dense = self.proj(self.norm(value_path(self.blocks[last], tokens)[:, 1:]))
        maps.append(to_map(F.normalize(dense, dim=-1)))
        return maps

    def convert_checkpoint(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """OpenAI's ``ViT-B-16.pt`` / open_clip (``visual.*``: the text tower's keys are left out) through timm's
        CLIP conversion, positions resized bicubically to this encoder's grid (197 -> 1025 at 512); this
        project's own layout passes unchanged."""
        if f"{OPENAI_PREFIX}class_embedding" not in state:
            return dict(state)
        converted = checkpoint_filter_fn(dict(state), self, antialias=False)
        bias = converted.pop("head.bias")
        if bias.any():
            raise ValueError("CLIP's projection has no bias; the converted one is not zero")
        converted["proj.weight"] = converted.pop("head.weight")
        return converted

    def compile_blocks(self) -> None:
        for block in self.blocks:
            block.compile()


def clip_vit(input_size: int, embed_dim: int, depth: int, num_heads: int, skip_indices: tuple[int, ...]) -> CLIPEncoder:
    """Built for ``input_size`` crops: the position table covers that grid (resized from 14 x 14 on loading)."""
    vit = VisionTransformer(
        img_size=(input_size // PATCH_SIZE) * PATCH_SIZE,
        patch_size=PATCH_SIZE,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        pre_norm=True,
        num_classes=0,
        dynamic_img_size=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
    )
    return CLIPEncoder(vit, skip_indices)


# SemiVL's recipe on Pascal (backbone lr = 1e-4 x 0.01, decoder 1e-4 x 10): encoder 1e-6, decoder x 1000.
@register_encoder(
    "clip-b16",
    summary="CLIP ViT-B/16, MaskCLIP dense features, spatial fine-tuning (SemiVL)",
    size_divisor=PATCH_SIZE,
    decoder_features=128,
    decoder_channels=(96, 192, 384, 768),
    lr=1e-6,
    lr_multiplier=1000.0,
    decoder="vlg",
    weights_hint="ViT-B-16.pt (OpenAI CLIP, or open_clip's state dict)",
)
def clip_b16(input_size: int) -> Encoder:
    return clip_vit(input_size, 768, 12, 12, (0, 4))


# CLIP's design at CPU size for the embedded benchmark (random init: no CLIP weights exist at this size).
@register_encoder(
    "clip-tiny",
    summary="CLIP-layout ViT/16, 96 wide, 4 blocks, MaskCLIP dense features (CPU)",
    size_divisor=PATCH_SIZE,
    decoder_features=32,
    decoder_channels=(24, 48, 96, 96),
    lr=1e-4,
    lr_multiplier=10.0,
    decoder="vlg",
    cpu_sized=True,
)
def clip_tiny(input_size: int) -> Encoder:
    return clip_vit(input_size, 96, 4, 3, (0, 1))
