"""Activation checkpointing of the encoder blocks (model.activation_checkpointing): the same gradients,
less memory, and compatible with the EMA teacher's deep copy, the frozen encoder and bf16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import DropPath

from unimatch.engine import Trainer
from unimatch.engine.memory import LiveTensorBytes
from unimatch.errors import ConfigError
from unimatch.models.segmentor import build_segmentor

CROP = 112


def _gradients_and_peak(checkpointing: bool, dtype: torch.dtype | None = None) -> tuple[list, int]:
    """Gradients of a DINOv2-layout segmentor (with stochastic depth, whose draws checkpointing must replay)
    for one complementary-dropout decode, and the peak of live tensor bytes of the step."""
    torch.manual_seed(0)
    model = build_segmentor("tiny", 5, input_size=CROP)
    for block in model.encoder.blocks:
        block.drop_path1, block.drop_path2 = DropPath(0.2), DropPath(0.2)
    if checkpointing:
        model.checkpoint_activations()
    images = torch.randn(4, 3, CROP, CROP, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    with LiveTensorBytes() as tracker:
        tracker.adopt(model.parameters())
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model.decode(model.features(images), images.shape[-2:], "complementary")
        logits.float().square().mean().backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None], tracker.peak


def test_checkpointing_gives_the_same_gradients_with_less_memory():
    plain, plain_peak = _gradients_and_peak(False)
    checkpointed, checkpointed_peak = _gradients_and_peak(True)
    assert len(plain) == len(checkpointed) > 0
    assert max(float((a - b).abs().max()) for a, b in zip(plain, checkpointed)) <= 1e-6
    assert checkpointed_peak < 0.9 * plain_peak, (plain_peak, checkpointed_peak)


def test_checkpointing_under_bf16_autocast_matches_without():
    plain, _ = _gradients_and_peak(False, torch.bfloat16)
    checkpointed, _ = _gradients_and_peak(True, torch.bfloat16)
    assert max(float((a - b).abs().max()) for a, b in zip(plain, checkpointed)) <= 1e-6


def test_a_deep_copy_runs_its_own_blocks_and_the_frozen_encoder_runs_plainly():
    model = build_segmentor("tiny", 5, input_size=CROP)
    model.checkpoint_activations()
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in teacher.encoder.blocks.parameters():
            parameter.zero_()
    images = torch.randn(2, 3, CROP, CROP)
    with torch.no_grad():
        # the copy's blocks compute with the copy's (zeroed) weights, not the original's
        assert not torch.equal(teacher.encoder(images)[-1], model.encoder(images)[-1])
    model.freeze_encoder()
    logits = model(images)  # the encoder under no_grad: no checkpoint, the decoder trains
    logits.mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None for p in model.head.parameters())


def test_an_encoder_without_blocks_is_a_config_error_naming_the_key(tiny_config, tmp_path):
    cfg = tiny_config(
        tmp_path, "model.encoder=resnet-tiny", "dataset.crop_size=48", "model.activation_checkpointing=true"
    )
    with pytest.raises(ConfigError, match="model.activation_checkpointing"):
        Trainer(cfg, progress=False)
