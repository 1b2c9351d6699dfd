"""The encoder interface and its registry (timm's ``register_model`` pattern).

An encoder turns an image batch into multi-level NCHW feature maps and declares, per level, its channels
and stride (``feature_info``). Its registry entry declares everything else the project needs to know:
the input-size divisor, the DPT decoder widths, the fine-tuning learning rates, which model makes the
pseudo labels, and whether its position tables tie it to one input size. The decoder, the channel
dropouts, the methods, evaluation, transforms and configs read only these declarations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...utils.registry import Registry


@dataclass(frozen=True)
class FeatureLevel:
    channels: int
    stride: int  # input pixels per feature-map pixel


class Encoder(nn.Module):
    """Base class: ``forward(x)`` returns one (B, C_i, H / stride_i, W / stride_i) map per ``feature_info``
    level. ``convert_checkpoint`` maps the family's released key layout to this module's (strict loading
    follows); ``compile_blocks`` compiles the expensive parts in place without changing state-dict keys."""

    feature_info: tuple[FeatureLevel, ...]
    # Keys of released files that only pre-training or classification use (never read by segmentation).
    unused_keys: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def convert_checkpoint(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(state)

    def drop_unused(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` without the released keys segmentation never reads (``unused_keys`` prefixes)."""
        return {key: value for key, value in state.items() if not key.startswith(self.unused_keys)}

    def compile_blocks(self) -> None:
        self.compile()

    def checkpointed_blocks(self) -> Sequence[nn.Module]:
        """The blocks whose activations ``model.activation_checkpointing`` recomputes: a ViT's ``blocks``."""
        return getattr(self, "blocks", ())

    def checkpoint_activations(self) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them
        (non-reentrant ``torch.utils.checkpoint``, the RNG and autocast state restored on recomputation).
        State-dict keys are unchanged; without gradients (frozen encoder, teacher, evaluation) blocks run plainly."""
        blocks = self.checkpointed_blocks()
        if not blocks:
            raise ValueError(f"{type(self).__name__} has no blocks for activation checkpointing")
        for block in blocks:
            block.forward = CheckpointedForward(block)


class CheckpointedForward:
    """A block's forward through ``torch.utils.checkpoint`` while gradients are recorded. An object rather
    than a closure: deep copies (the EMA teacher) then call their own block, not the original's."""

    def __init__(self, block: nn.Module):
        self.block = block

    def __call__(self, *args, **kwargs):
        forward = partial(type(self.block).forward, self.block)
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    build: Callable[[int], Encoder]  # input (crop) size -> encoder with random weights
    summary: str
    size_divisor: int  # input height and width must be multiples of this
    decoder_features: int  # DPT: fusion width
    decoder_channels: tuple[int, int, int, int]  # DPT: per-level projection widths
    lr: float  # encoder learning rate when fine-tuning (train.lr default)
    lr_multiplier: float  # decoder lr = lr x this (train.lr_multiplier default)
    teacher: Literal["ema", "student"] = "ema"  # method.teacher default
    # Position tables tied to the grid it was built for: inputs must be exactly crop x crop, so evaluation
    # runs sliding windows of that size.
    fixed_input: bool = False
    cpu_sized: bool = False  # small enough to train on a CPU (the embedded benchmark, tests)
    weights_hint: str = ""  # the released file a user points model.weights at
    hub: tuple[str, str] | None = None  # (torch.hub repo, entry point) for model.hub_download (online only)
    decoder: str = "dpt"  # the decoder its feature levels are made for (parameter counts, `unimatch encoders`)


ENCODERS: Registry[EncoderEntry] = Registry("encoder")


def register_encoder(name: str, **declaration) -> Callable[[Callable[[int], Encoder]], Callable[[int], Encoder]]:
    """Decorator: register ``builder(input_size) -> Encoder`` under ``name`` with its declaration
    (the fields of :class:`EncoderEntry`)."""

    def register(builder: Callable[[int], Encoder]) -> Callable[[int], Encoder]:
        ENCODERS.add(name, EncoderEntry(name=name, build=builder, **declaration))
        return builder

    return register


def encoder_entry(name: str) -> EncoderEntry:
    return ENCODERS.entry(name)


def build_encoder(name: str, input_size: int = 518) -> Encoder:
    """Encoder ``name`` with random weights, for inputs of ``input_size`` (used by fixed-input encoders)."""
    return encoder_entry(name).build(input_size)


def parameter_counts(name: str, nclass: int = 21) -> tuple[int, int]:
    """(encoder, decoder) parameters of the segmentor of ``name`` with the decoder it declares, built without
    allocating weights where the library allows it (the meta device)."""
    from ..segmentor import build_segmentor

    decoder = encoder_entry(name).decoder
    try:
        with torch.device("meta"):
            model = build_segmentor(name, nclass, decoder=decoder)
    except (RuntimeError, NotImplementedError):  # a builder that reads tensor values while initialising
        model = build_segmentor(name, nclass, decoder=decoder)
    return sum(p.numel() for p in model.encoder.parameters()), sum(p.numel() for p in model.head.parameters())
