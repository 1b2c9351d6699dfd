"""A registered encoder + a registered decoder (DPT by default), with UniMatch V2's complementary channel dropout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import DecoderSettings
from .decoders import decoder_entry
from .encoders import encoder_entry

DropPosition = Literal["encoder-decoder", "decoder-classifier"]
FeatureDrop = Literal["complementary", "random"] | None


def random_channel_masks(batch: int, channels: int, device: torch.device | None = None) -> torch.Tensor:
    """Independent channel dropout (p = 0.5, kept channels x2) per sample: Table 6's random-dropout streams."""
    return torch.randint(0, 2, (batch, channels), device=device).float() * 2.0


def complementary_masks(
    batch: int, channels: int, undropped_fraction: float, device: torch.device | None = None
) -> torch.Tensor:
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


class EncoderDecoder(nn.Module):
    """An ``encoder`` and the modules after it, as the engine's optimiser and freezing read them: the encoder
    trains at its own learning rate, or not at all (frozen, in eval mode so its statistics stay); the
    subclass names its ``decoder_modules``."""

    frozen_encoder = False
    encoder: nn.Module

    def freeze_encoder(self) -> None:
        """Train the decoder only: encoder weights get no gradient and stay in eval mode."""
        self.frozen_encoder = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "EncoderDecoder":
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        return self

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def checkpoint_activations(self) -> None:
        """``model.activation_checkpointing``: the encoder blocks' activations recomputed in backward; a
        backbone without blocks (a CNN, a wide ResNet) is a ValueError."""
        checkpoint = getattr(self.encoder, "checkpoint_activations", None)
        if checkpoint is None:
            raise ValueError(f"{type(self.encoder).__name__} has no blocks to checkpoint")
        checkpoint()

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.frozen_encoder:
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)

    def drop_masks(self, drop: FeatureDrop, batch: int, channels: int, device: torch.device) -> torch.Tensor:
        if drop == "complementary":
            return complementary_masks(batch, channels, self.undropped_fraction, device)
        if drop == "random":
            return random_channel_masks(batch, channels, device)
        raise ValueError(f"unknown feature dropout '{drop}'")

    def decoder_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.decoder_modules() for p in module.parameters() if p.requires_grad]


class Segmentor(EncoderDecoder):
    def __init__(
        self,
        encoder: str,
        nclass: int,
        use_bn: bool = False,
        undropped_fraction: float = 0.5,
        drop_position: DropPosition = "encoder-decoder",
        frozen_encoder: bool = False,
        input_size: int = 518,
        decoder: str = "dpt",
        decoder_settings: DecoderSettings | None = None,
        input_images: int = 1,
    ):
        """``input_size``: the training crop; encoders whose position tables are tied to one grid are built for it.
        ``decoder``: a registered decoder, built with ``decoder_settings`` (default: its Settings' defaults).
        ``input_images`` 2: a siamese change detector (SPEC §10): the input holds pairs (A, B) as 6 channels
        and the decoder reads |f(A) - f(B)| at every level."""
        super().__init__()
        if nclass < 2:
            raise ValueError(f"nclass must be at least 2, got {nclass}")
        if input_images not in (1, 2):
            raise ValueError(f"input_images must be 1 (an image) or 2 (a bi-temporal pair), got {input_images}")
        if drop_position not in ("encoder-decoder", "decoder-classifier"):
            raise ValueError(f"drop_position must be 'encoder-decoder' or 'decoder-classifier', got '{drop_position}'")
        entry = encoder_entry(encoder)
        self.nclass = nclass
        self.input_images = input_images
        self.encoder_name = encoder
        self.size_divisor = entry.size_divisor
        self.fixed_input_size = input_size if entry.fixed_input else None
        self.undropped_fraction = undropped_fraction
        self.drop_position = drop_position
        self.encoder = entry.build(input_size)
        head = decoder_entry(decoder)
        self.head = head.build(nclass, self.encoder.feature_info, entry, decoder_settings or head.Settings(), use_bn)
        # A method's module between encoder and decoder (``Method.build_model``, e.g. AllSpark's); None: none.
        self.neck: nn.Module | None = None
        self.frozen_encoder = False
        if frozen_encoder:
            self.freeze_encoder()

    def decoder_modules(self) -> list[nn.Module]:
        """The decoder and a method's neck: what trains at the decoder learning rate."""
        return [self.head] if self.neck is None else [self.neck, self.head]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's (B, C_i, h_i, w_i) feature maps; for pairs (B, 6, H, W) the absolute differences
        |f(A) - f(B)|, the encoder running once over A and B stacked on the batch (as the released code)."""
        height, width = x.shape[-2:]
        if height % self.size_divisor or width % self.size_divisor:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of the size divisor {self.size_divisor} of "
                f"encoder '{self.encoder_name}'"
            )
        if x.shape[1] != 3 * self.input_images:
            raise ValueError(
                f"expected {3 * self.input_images} input channels ({self.input_images} RGB image(s)), got {x.shape[1]}"
            )
        if self.input_images == 2:
            maps = self._encode(torch.cat(x.chunk(2, dim=1)))
            return [(level[: x.shape[0]] - level[x.shape[0] :]).abs() for level in maps]
        return self._encode(x)

    def decode(self, maps: Sequence[torch.Tensor], size: tuple[int, int], drop: FeatureDrop = None) -> torch.Tensor:
        """Decoder logits at ``size`` (the input's height and width); ``drop`` applies channel dropout at
        ``drop_position``.

        The same channel mask multiplies every feature map (encoder-decoder position; a level narrower
        than the widest takes the mask's first channels, so a pair's views stay complementary and the same
        pairs stay undropped on every level) or the fused decoder features before the classifier
        (decoder-classifier position, Table 12).
        """
        if drop and self.drop_position == "encoder-decoder":
            masks = self.drop_masks(drop, maps[0].shape[0], max(f.shape[1] for f in maps), maps[0].device)
            maps = [feature * masks[:, : feature.shape[1], None, None].to(feature.dtype) for feature in maps]
        fused = self.head.fuse(maps)
        if drop and self.drop_position == "decoder-classifier":
            masks = self.drop_masks(drop, fused.shape[0], fused.shape[1], fused.device)
            fused = fused * masks[:, :, None, None].to(fused.dtype)
        logits = self.head.classifier(fused)
        return F.interpolate(logits, tuple(size), mode="bilinear", align_corners=self.head.align_corners)

    def forward(self, x: torch.Tensor, comp_drop: bool = False) -> torch.Tensor:
        """Logits (B, nclass, H, W), through the neck when a method added one (its plain, per-image form);
        ``comp_drop`` treats the two batch halves as complementary views."""
        maps = self.features(x)
        if self.neck is not None:
            maps = self.neck(maps)
        return self.decode(maps, x.shape[-2:], "complementary" if comp_drop else None)


def build_segmentor(encoder: str, nclass: int, **options) -> Segmentor:
    """Build the segmentor of a registered encoder. Options: use_bn, undropped_fraction, drop_position,
    frozen_encoder, input_size, decoder, decoder_settings, input_images."""
    return Segmentor(encoder, nclass, **options)
