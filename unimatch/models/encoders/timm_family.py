"""Table 9's other encoders through timm (random init; released weights come from files the user points
to): ResNet-152 with the deep stem, BEiT-B/L, SAM-B/L without its neck, and a CPU-sized ResNet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import timm
import torch
from timm.models import beit, vision_transformer_sam
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from .base import Encoder, FeatureLevel, register_encoder

LARGE_HEAD = dict(decoder_features=256, decoder_channels=(256, 512, 1024, 1024))  # DINOv2-L's DPT widths
BASE_HEAD = dict(decoder_features=128, decoder_channels=(96, 192, 384, 768))  # DINOv2-B's DPT widths
# The authors' logs: every non-DINOv2 encoder of Table 9 fine-tunes at 1e-5 with the decoder at 10x.
TABLE9_LR = dict(lr=1e-5, lr_multiplier=10.0)


class WrappedEncoder(Encoder):
    """A library model kept whole under ``model.`` (its released keys gain that prefix on loading)."""

    def released_layout(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The family's released keys in timm's names (identity unless the family renames)."""
        return dict(state)

    def convert_checkpoint(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = {key.removeprefix("model."): value for key, value in state.items()}  # ours are prefixed
        state = self.drop_unused(self.released_layout(state))
        return {f"model.{key}": value for key, value in state.items()}

    def compile_blocks(self) -> None:
        for block in getattr(self.model, "blocks", [self.model]):
            block.compile()

    def checkpointed_blocks(self) -> Sequence[nn.Module]:
        return getattr(self.model, "blocks", ())


class TimmEncoder(WrappedEncoder):
    """Features from a timm model's ``forward_intermediates`` at ``indices``."""

    def __init__(self, model: nn.Module, indices: tuple[int, ...], strides: tuple[int, ...]):
        super().__init__()
        self.model, self.indices = model, indices
        channels = [info["num_chs"] for info in model.feature_info]
        self.feature_info = tuple(FeatureLevel(channels[i], stride) for i, stride in zip(indices, strides))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.indices), intermediates_only=True)


class ResNetEncoder(TimmEncoder):
    unused_keys = ("fc.",)  # the ImageNet classifier

    def __init__(self, model: ResNet):
        strides = tuple(info["reduction"] for info in model.feature_info[1:])
        super().__init__(model, (1, 2, 3, 4), strides)


class BEiTEncoder(TimmEncoder):
    unused_keys = ("head.", "fc_norm.", "norm.", "mask_token", "lm_head.")  # classification / MIM only

    def released_layout(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm's BEiT filter: drops the index buffers and resizes relative-position tables to this grid."""
        return beit.checkpoint_filter_fn(dict(state), self.model)


class SAMEncoder(TimmEncoder):
    unused_keys = ("neck.", "head.")  # Table 9's SAM counts leave the neck out

    def released_layout(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A whole SAM file (image_encoder.*, prompt_encoder.*, mask_decoder.*) -> its image encoder in timm's names."""
        return vision_transformer_sam.checkpoint_filter_fn(dict(state), self.model)


# Hierarchical encoders take DINOv2-L's DPT widths: with a 1x1 projection per level and no resizing this
# reproduces the decoder sizes of the authors' logs (20.3M on ResNet-152, 17.7M on MiT-B5 at 21 classes).
@register_encoder(
    "resnet152",
    summary="ResNet-152, deep 3-conv stem (resnet152s)",
    size_divisor=32,
    weights_hint="resnet152s (timm/torchvision layout, deep stem)",
    **LARGE_HEAD,
    **TABLE9_LR,
)
def resnet152(input_size: int) -> Encoder:
    return ResNetEncoder(timm.create_model("resnet152s", pretrained=False, num_classes=0))


# A CPU-sized CNN: one basic block per stage, the last stage dilated (output stride 16, DeepLab-style) so
# that the embedded crop of 112 = 7 x 16 fits; random init, so it trains at from-scratch rates.
@register_encoder(
    "resnet-tiny",
    summary="ResNet, 1 basic block per stage, 24..192 wide, output stride 16 (CPU)",
    size_divisor=16,
    decoder_features=32,
    decoder_channels=(24, 48, 96, 96),
    lr=1e-3,
    lr_multiplier=1.0,
    cpu_sized=True,
)
def resnet_tiny(input_size: int) -> Encoder:
    model = ResNet(
        BasicBlock,
        (1, 1, 1, 1),
        num_classes=0,
        channels=(24, 48, 96, 192),
        stem_width=16,
        stem_type="deep",
        output_stride=16,
    )
    return ResNetEncoder(model)


def beit_encoder(timm_name: str, input_size: int, indices: tuple[int, ...]) -> Encoder:
    # Relative-position tables are sized for one grid: BEiT is built for the crop (fixed_input below).
    model = timm.create_model(timm_name, pretrained=False, num_classes=0, img_size=input_size)
    model.norm, model.fc_norm = nn.Identity(), nn.Identity()  # classification pooling only; features are block outputs
    return BEiTEncoder(model, indices, (16,) * len(indices))


# BEiT and SAM feed DPT from blocks 2/5/8/11 (base) and 5/11/17/23 (large): SAM's global-attention blocks,
# and the hooks MiDaS v3.1 uses for BEiT. The authors' logs: pseudo labels from the student for BEiT.
@register_encoder(
    "beit-b",
    summary="BEiT-B/16",
    size_divisor=16,
    teacher="student",
    fixed_input=True,
    weights_hint="beit_base_patch16_224_pt22k_ft22k.pth (unilm layout)",
    **BASE_HEAD,
    **TABLE9_LR,
)
def beit_b(input_size: int) -> Encoder:
    return beit_encoder("beit_base_patch16_224", input_size, (2, 5, 8, 11))


@register_encoder(
    "beit-l",
    summary="BEiT-L/16",
    size_divisor=16,
    teacher="student",
    fixed_input=True,
    weights_hint="beit_large_patch16_224_pt22k_ft22k.pth (unilm layout)",
    **LARGE_HEAD,
    **TABLE9_LR,
)
def beit_l(input_size: int) -> Encoder:
    return beit_encoder("beit_large_patch16_224", input_size, (5, 11, 17, 23))


def sam_encoder(timm_name: str, indices: tuple[int, ...]) -> Encoder:
    model = timm.create_model(timm_name, pretrained=False, num_classes=0, neck_chans=0)
    model.neck = nn.Identity()  # features are block outputs; without a neck timm would keep a post-norm
    return SAMEncoder(model, indices, (16,) * len(indices))


@register_encoder(
    "sam-b",
    summary="SAM ViT-B/16 image encoder, no neck",
    size_divisor=16,
    weights_hint="sam_vit_b_01ec64.pth (SAM layout)",
    **BASE_HEAD,
    **TABLE9_LR,
)
def sam_b(input_size: int) -> Encoder:
    return sam_encoder("samvit_base_patch16", (2, 5, 8, 11))


@register_encoder(
    "sam-l",
    summary="SAM ViT-L/16 image encoder, no neck",
    size_divisor=16,
    weights_hint="sam_vit_l_0b3195.pth (SAM layout)",
    **LARGE_HEAD,
    **TABLE9_LR,
)
def sam_l(input_size: int) -> Encoder:
    return sam_encoder("samvit_large_patch16", (5, 11, 17, 23))
