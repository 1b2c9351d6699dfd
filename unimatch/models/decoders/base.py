"""The decoder interface and its registry (timm's ``register_model`` pattern, like the encoders').

A decoder turns the encoder's feature maps into class logits in two parts, ``fuse`` (maps -> features)
and ``classifier`` (a 1x1 convolution to the classes), so that UniMatch V2's channel dropout can sit at
either end (``Segmentor.decode``). Its registry entry builds it from the class count, the encoder's
``feature_info`` (each decoder reads the levels it needs), the encoder's entry (declared widths) and its
own validated settings (``model.decoder_settings``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ...settings import DecoderSettings
from ...utils.registry import Registry
from ..encoders import EncoderEntry, FeatureLevel


class Decoder(nn.Module):
    """Base class: ``fuse(maps)`` gives the features the ``classifier`` (a 1x1 ``nn.Conv2d``) reads; logits
    are resized to the input with ``align_corners`` as the decoder's reference does."""

    classifier: nn.Conv2d
    align_corners: bool = True

    def fuse(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.fuse(maps))


class DecoderBuilder(Protocol):
    def __call__(
        self,
        nclass: int,
        levels: Sequence[FeatureLevel],
        encoder: EncoderEntry,
        settings: DecoderSettings,
        use_bn: bool,
    ) -> Decoder: ...


@dataclass(frozen=True)
class DecoderEntry:
    name: str
    build: DecoderBuilder
    summary: str
    Settings: type[DecoderSettings] = DecoderSettings  # its config section, model.decoder_settings


DECODERS: Registry[DecoderEntry] = Registry("decoder")


def register_decoder(
    name: str, summary: str, settings: type[DecoderSettings] = DecoderSettings
) -> Callable[[DecoderBuilder], DecoderBuilder]:
    """Decorator: register ``builder(nclass, levels, encoder_entry, settings, use_bn) -> Decoder`` under
    ``name`` (the config's ``model.decoder``) with its settings model."""

    def register(builder: DecoderBuilder) -> DecoderBuilder:
        DECODERS.add(name, DecoderEntry(name, builder, summary, settings))
        return builder

    return register


def decoder_entry(name: str) -> DecoderEntry:
    return DECODERS.entry(name)
