"""SemiVL's language-guided decoder (VLGHead, SPEC §13 (3)): reasoning over per-class similarity maps.

The dense CLIP embedding is compared with every class text embedding (cosine), and each class's map is
decoded with weights shared over classes: spatial reasoning (7x7 conv + residual ASPP), semantic reasoning
across classes (a transformer over the class tokens of each 4x4-pooled position, each token carrying its
class's projected text embedding), two up blocks with skips from early encoder blocks, and a 3x3 conv to
one logit per class. With concept rows, a class's logit is the max over its concepts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, ValidationInfo, field_validator
from torch import nn

from ...errors import ConfigError
from ...settings import DecoderSettings
from ..encoders import EncoderEntry, FeatureLevel
from ..text import (
    TextEmbeddingError,
    aggregate_concepts,
    concept_classes,
    load_text_embeddings,
    random_text_embeddings,
    read_class_concepts,
)
from .base import Decoder, register_decoder

GroupWidth = Annotated[int, Field(ge=16, multiple_of=16)]  # GroupNorm with width / 16 groups


class VLGSettings(DecoderSettings):
    """SemiVL's widths by default (d = 128); a CPU-sized decoder takes smaller ones."""

    # (R, E) float16/float32 unit-norm .npy, one row per class or per concept; null: seeded random unit rows,
    # loudly (like a randomly initialised encoder: for parameter counts and plumbing checks only)
    text_embeddings: str | None = None
    concepts: str | None = None  # classes file (one class per line, concepts separated by |): the class of each row
    channels: GroupWidth = 128  # d: spatial and semantic reasoning width
    text_channels: int = Field(128, ge=1)  # the projected text embedding (semantic anchor) per class token
    up_channels: tuple[GroupWidth, GroupWidth] = (64, 32)
    skip_channels: tuple[PositiveInt, PositiveInt] = (32, 16)  # projections of the later and the earlier skip level
    layers: int = Field(2, ge=0)  # semantic reasoning transformer layers
    heads: int = Field(4, ge=1)
    pool: int = Field(4, ge=1)  # average pooling before semantic reasoning
    kernel: int = Field(7, ge=1)  # first conv on each similarity map (odd)

    @field_validator("heads")
    @classmethod
    def _heads_fit(cls, heads: int, info: ValidationInfo) -> int:
        width = info.data.get("channels", 0) + info.data.get("text_channels", 0)
        if width % heads:
            raise ValueError(f"{heads} heads do not divide the token width channels + text_channels = {width}")
        return heads

    @field_validator("kernel")
    @classmethod
    def _odd(cls, kernel: int) -> int:
        if kernel % 2 == 0:
            raise ValueError(f"{kernel} must be odd (a same-size convolution)")
        return kernel


def norm_relu(channels: int) -> list[nn.Module]:
    return [nn.GroupNorm(channels // 16, channels), nn.ReLU(inplace=True)]


class ResidualASPP(nn.Module):
    """1x1 and dilated 3x3 branches plus image pooling, projected and added to the input."""

    def __init__(self, channels: int, dilations: Sequence[int] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), *norm_relu(channels))]
        )
        self.branches.extend(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=d, dilation=d, bias=False), *norm_relu(channels))
            for d in dilations
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1, bias=False), *norm_relu(channels)
        )
        self.project = nn.Sequential(
            nn.Conv2d(channels * (len(dilations) + 2), channels, 1, bias=False), *norm_relu(channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), x.shape[-2:], mode="bilinear", align_corners=True)
        return x + self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class SemanticLayer(nn.Module):
    """A transformer layer across the classes at each pooled position; tokens are [visual ‖ text], the text
    half dropped afterwards; the result is upsampled and added back."""

    def __init__(self, channels: int, text_channels: int, heads: int, pool: int):
        super().__init__()
        self.pool = pool
        self.layer = nn.TransformerEncoderLayer(
            channels + text_channels,
            heads,
            dim_feedforward=4 * channels,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x (B, N, C, h, w) per-class maps; text (N, T) projected class embeddings."""
        batch, classes, channels, height, width = x.shape
        kernel = min(self.pool, height, width)  # a map smaller than the pool is pooled whole
        pooled = F.avg_pool2d(x.flatten(0, 1), kernel)
        ph, pw = pooled.shape[-2:]
        tokens = pooled.view(batch, classes, channels, ph * pw).permute(0, 3, 1, 2).reshape(-1, classes, channels)
        tokens = torch.cat((tokens, text.to(tokens.dtype).expand(tokens.shape[0], -1, -1)), dim=-1)
        tokens = self.layer(tokens)[..., :channels]
        maps = (
            tokens.view(batch, ph * pw, classes, channels)
            .permute(0, 2, 3, 1)
            .reshape(batch * classes, channels, ph, pw)
        )
        maps = F.interpolate(maps, (height, width), mode="bilinear", align_corners=True)
        return x + maps.view(batch, classes, channels, height, width)


class UpBlock(nn.Module):
    """One of SemiVL's upsampling blocks (paper §3.4): a learned 2x2 transposed convolution doubles the
    resolution of every class's map, the image's skip features join by concatenation, and two 3x3
    convolutions with GroupNorm fuse both to ``out_channels``. A convolution over [map ‖ skip] is the sum of
    one convolution per part, so the skip's part is computed once per image and added to each of its
    classes' maps instead of copying the skip N times."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.fuse_map = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.fuse_skip = nn.Conv2d(skip_channels, out_channels, 3, padding=1, bias=False)
        self.refine = nn.Sequential(
            *norm_relu(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            *norm_relu(out_channels),
        )

    def forward(self, maps: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """maps (B*N, C, h, w), N per image; skip (B, S, h', w') -> (B*N, out_channels, 2h, 2w)."""
        upsampled = self.upsample(maps)
        skip = F.interpolate(skip, upsampled.shape[-2:], mode="bilinear", align_corners=False)
        per_class = self.fuse_map(upsampled).unflatten(0, (skip.shape[0], -1))  # (B, N, out, 2h, 2w)
        return self.refine((per_class + self.fuse_skip(skip).unsqueeze(1)).flatten(0, 1))


class VLGHead(Decoder):
    """Logits (B, nclass, H/4, W/4) from the encoder's levels [skip_0, skip_1, dense embedding] (stride 16);
    ``fuse`` gives per-row features (B*R, C, H/4, W/4), so channel dropout before the classifier pairs views
    row by row.

    ``text_embeddings`` (R, E) rows of classes or concepts (``row_class``: the class of each row; None: one
    row per class) are kept as buffers, so a checkpoint carries the embeddings it was trained with."""

    align_corners = False  # SemiVL resizes its logits with align_corners=False
    ema_copied_buffers = ("text_embeddings",)  # fixed inputs, not weights: an EMA teacher takes them as they are

    def __init__(
        self,
        nclass: int,
        levels: Sequence[FeatureLevel],
        text_embeddings: torch.Tensor,
        row_class: Sequence[int] | None = None,
        channels: int = 128,
        text_channels: int = 128,
        up_channels: tuple[int, int] = (64, 32),
        skip_channels: tuple[int, int] = (32, 16),
        layers: int = 2,
        heads: int = 4,
        pool: int = 4,
        kernel: int = 7,
    ):
        super().__init__()
        if len(levels) != 3:
            raise ValueError(
                "the language-guided decoder reads two skip levels and the dense embedding, the encoder declares "
                f"{len(levels)} levels"
            )
        if text_embeddings.shape[1] != levels[-1].channels:
            raise ValueError(
                f"text embeddings are {text_embeddings.shape[1]} wide but the encoder's dense embedding is "
                f"{levels[-1].channels}"
            )
        row_class = list(range(nclass)) if row_class is None else list(row_class)
        if len(row_class) != text_embeddings.shape[0] or sorted(set(row_class)) != list(range(nclass)):
            raise ValueError(
                f"{text_embeddings.shape[0]} text-embedding rows must cover the {nclass} classes, one row or more each"
            )
        self.nclass = nclass
        self.register_buffer("text_embeddings", F.normalize(text_embeddings.float(), dim=-1))
        self.conv1 = nn.Conv2d(1, channels, kernel, padding=kernel // 2)
        self.aspp = ResidualASPP(channels)
        self.text_proj = nn.Sequential(nn.Linear(text_embeddings.shape[1], text_channels), nn.ReLU())
        self.layers = nn.ModuleList(SemanticLayer(channels, text_channels, heads, pool) for _ in range(layers))
        # the later skip (second level) joins the first up block, the earlier one the second, as SemiVL
        self.skip_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(levels[i].channels, width, 3, padding=1), nn.ReLU())
            for i, width in zip((1, 0), skip_channels)
        )
        self.up1 = UpBlock(channels, up_channels[0], skip_channels[0])
        self.up2 = UpBlock(up_channels[0], up_channels[1], skip_channels[1])
        self.classifier = RowClassifier(up_channels[1], row_class, nclass)

    def similarity(self, dense: torch.Tensor) -> torch.Tensor:
        """(B, R, h, w) cosine similarity of each position's embedding with each text row."""
        return torch.einsum("bchw,nc->bnhw", F.normalize(dense, dim=1), self.text_embeddings.to(dense.dtype))

    def fuse(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-row decoder features (B*R, up_channels[1], H/4, W/4) before the per-row classifier."""
        first, second, dense = maps
        x = self.similarity(dense)
        batch, rows, height, width = x.shape
        x = self.aspp(self.conv1(x.reshape(batch * rows, 1, height, width)))
        x = x.view(batch, rows, -1, height, width)
        text = self.text_proj(self.text_embeddings)
        for layer in self.layers:
            x = layer(x, text)
        x = self.up1(x.flatten(0, 1), self.skip_proj[0](second))
        return self.up2(x, self.skip_proj[1](first))


class RowClassifier(nn.Module):
    """A 3x3 conv to one logit per row (weights shared over rows), regrouped per image, concepts
    max-aggregated to their classes: (B*R, C, h, w) -> (B, nclass, h, w)."""

    def __init__(self, channels: int, row_class: Sequence[int], nclass: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 3, padding=1)
        self.register_buffer("row_class", torch.tensor(row_class, dtype=torch.long))
        self.nclass = nclass

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        logits = self.conv(fused)
        logits = logits.view(-1, self.row_class.numel(), *logits.shape[-2:])
        return aggregate_concepts(logits, self.row_class, self.nclass)


@register_decoder(
    "vlg",
    "SemiVL's language-guided decoder: class text embeddings against a CLIP encoder's dense embedding",
    VLGSettings,
)
def vlg(
    nclass: int, levels: Sequence[FeatureLevel], encoder: EncoderEntry, settings: VLGSettings, use_bn: bool
) -> Decoder:
    widths = settings.model_dump(exclude={"text_embeddings", "concepts"})
    row_class = None
    if settings.concepts:
        classes = read_class_concepts(settings.concepts)
        if len(classes) != nclass:
            raise ConfigError(
                f"model.decoder_settings.concepts: {settings.concepts} lists {len(classes)} classes but "
                f"dataset.nclass is {nclass}"
            )
        row_class = concept_classes(classes)
    rows = len(row_class) if row_class else nclass
    if settings.text_embeddings is None:
        warnings.warn(
            "model.decoder_settings.text_embeddings is not set: the language-guided decoder gets RANDOM text "
            "embeddings (a plumbing check, not CLIP's); compute real ones with `unimatch text-embeddings`",
            stacklevel=2,
        )
        return VLGHead(
            nclass,
            levels,
            torch.from_numpy(random_text_embeddings(rows, levels[-1].channels, seed=0)),
            row_class,
            **widths,
        )
    try:
        embeddings = load_text_embeddings(settings.text_embeddings, rows)
    except TextEmbeddingError as error:
        raise ConfigError(f"model.decoder_settings.text_embeddings: {error}") from None
    return VLGHead(nclass, levels, embeddings, row_class, **widths)
