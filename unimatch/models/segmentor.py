"""DINOv2 encoder + DPT decoder, with UniMatch V2's complementary channel dropout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .dpt import DPTHead
from .encoder import PATCH_SIZE, DINOv2Encoder, encoder_spec

DECODER_WIDTHS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "tiny": (32, (24, 48, 96, 96)),
    "small": (64, (48, 96, 192, 384)),
    "base": (128, (96, 192, 384, 768)),
    "large": (256, (256, 512, 1024, 1024)),
    "giant": (384, (1536, 1536, 1536, 1536)),
}

DropPosition = Literal["encoder-decoder", "decoder-classifier"]
FeatureDrop = Literal["complementary", "random"] | None


def random_channel_masks(batch: int, channels: int, device: torch.device | None = None) -> torch.Tensor:
    """Independent channel dropout (p = 0.5, kept channels x2) per sample: Table 6's random-dropout streams."""
    return torch.randint(0, 2, (batch, channels), device=device).float() * 2.0


def complementary_masks(batch: int, channels: int, undropped_fraction: float, device: torch.device | None = None) -> torch.Tensor:
    """Channel masks for a batch made of two halves (view 1, view 2) of ``batch // 2`` pairs each.

    Pair i gets M ~ Bernoulli(0.5)^C scaled by 2 for view 1 and 2(1 - M) for view 2, so the two views
    see disjoint channels. A random ``undropped_fraction`` of the pairs keeps all channels (mask 1):
    the reference code's behaviour (0.5); the paper's formula is 0.
    """
    if batch % 2:
        raise ValueError(f"complementary dropout needs an even batch (two views per pair), got {batch}")
    if not 0.0 <= undropped_fraction <= 1.0:
        raise ValueError(f"undropped_fraction must be in [0, 1], got {undropped_fraction}")
    pairs = batch // 2
    first = torch.randint(0, 2, (pairs, channels), device=device).float() * 2.0
    second = 2.0 - first
    kept = torch.randperm(pairs, device=device)[: int(pairs * undropped_fraction)]
    first[kept] = 1.0
    second[kept] = 1.0
    return torch.cat((first, second))


def token_grid(x: torch.Tensor) -> tuple[int, int]:
    return x.shape[-2] // PATCH_SIZE, x.shape[-1] // PATCH_SIZE


class Segmentor(nn.Module):
    def __init__(
        self,
        encoder: str,
        nclass: int,
        use_bn: bool = False,
        undropped_fraction: float = 0.5,
        drop_position: DropPosition = "encoder-decoder",
        frozen_encoder: bool = False,
    ):
        super().__init__()
        if nclass < 2:
            raise ValueError(f"nclass must be at least 2, got {nclass}")
        if drop_position not in ("encoder-decoder", "decoder-classifier"):
            raise ValueError(f"drop_position must be 'encoder-decoder' or 'decoder-classifier', got '{drop_position}'")
        encoder_spec(encoder)
        features, out_channels = DECODER_WIDTHS[encoder]
        self.nclass = nclass
        self.encoder_name = encoder
        self.undropped_fraction = undropped_fraction
        self.drop_position = drop_position
        self.encoder = DINOv2Encoder(encoder)
        self.head = DPTHead(nclass, self.encoder.embed_dim, features, out_channels, use_bn)
        self.frozen_encoder = False
        if frozen_encoder:
            self.freeze_encoder()

    def freeze_encoder(self) -> None:
        """Train the decoder only: encoder weights get no gradient and stay in eval mode."""
        self.frozen_encoder = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "Segmentor":
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        return self

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.frozen_encoder:
            with torch.no_grad():
                return self.encoder.get_intermediate_layers(x)
        return self.encoder.get_intermediate_layers(x)

    def drop_masks(self, drop: FeatureDrop, batch: int, channels: int, device: torch.device) -> torch.Tensor:
        if drop == "complementary":
            return complementary_masks(batch, channels, self.undropped_fraction, device)
        if drop == "random":
            return random_channel_masks(batch, channels, device)
        raise ValueError(f"unknown feature dropout '{drop}'")

    def decode(self, token_maps: Sequence[torch.Tensor], grid: tuple[int, int], drop: FeatureDrop = None) -> torch.Tensor:
        """Decoder logits at the input resolution; ``drop`` applies channel dropout at ``drop_position``.

        The same channel mask multiplies all four token maps (encoder-decoder position) or the fused
        decoder features before the classifier (decoder-classifier position, Table 12).
        """
        grid_h, grid_w = grid
        if drop and self.drop_position == "encoder-decoder":
            masks = self.drop_masks(drop, token_maps[0].shape[0], token_maps[0].shape[-1], token_maps[0].device)
            token_maps = [tokens * masks.unsqueeze(1).to(tokens.dtype) for tokens in token_maps]
        fused = self.head.fuse(token_maps, grid_h, grid_w)
        if drop and self.drop_position == "decoder-classifier":
            masks = self.drop_masks(drop, fused.shape[0], fused.shape[1], fused.device)
            fused = fused * masks[:, :, None, None].to(fused.dtype)
        logits = self.head.classifier(fused)
        return F.interpolate(logits, (grid_h * PATCH_SIZE, grid_w * PATCH_SIZE), mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor, comp_drop: bool = False) -> torch.Tensor:
        """Logits (B, nclass, H, W); ``comp_drop`` treats the two batch halves as complementary views."""
        return self.decode(self.features(x), token_grid(x), "complementary" if comp_drop else None)


def build_segmentor(encoder: str, nclass: int, **options) -> Segmentor:
    """Build the DINOv2-DPT segmentor. Options: use_bn, undropped_fraction, drop_position, frozen_encoder."""
    return Segmentor(encoder, nclass, **options)
