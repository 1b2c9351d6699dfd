"""Strict loading of DINOv2 encoder checkpoints and of segmentor checkpoints (ours and the authors')."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# DINOv2's masked-image-modelling token: pre-training only, segmentation never reads it.
PRETRAIN_ONLY_KEYS = frozenset({"mask_token"})
OFFICIAL_TO_TIMM = (
    (re.compile(r"^(blocks\.\d+\.mlp)\.w12\."), r"\1.fc1."),  # SwiGLU (giant) fused input projection
    (re.compile(r"^(blocks\.\d+\.mlp)\.w3\."), r"\1.fc2."),
)
RELEASED_HEAD_TO_OURS = ((re.compile(r"^head\.scratch\.output_conv\.2\."), "head.classifier."),)
CLASSIFIER_WEIGHT = "head.classifier.weight"  # (nclass, features, 1, 1)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message names the file and keys."""


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load`` with ``weights_only=True`` and a clear error for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated or pickled with arbitrary objects
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error


def _rename(state: Mapping[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return dict(state)


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if mismatched:
        problems.append(f"shape mismatch {mismatched[:4]}{' ...' if len(mismatched) > 4 else ''}")
    if problems:
        raise CheckpointError(f"{source} does not fit this model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def encoder_state_from(raw: Mapping) -> dict[str, torch.Tensor]:
    """Normalise an official DINOv2 or timm-layout encoder state dict to this project's key names."""
    state = raw.get("model", raw) if isinstance(raw, Mapping) else raw
    state = _strip_prefix(_strip_prefix(state, "module."), "backbone.")
    state = {key: value for key, value in state.items() if key not in PRETRAIN_ONLY_KEYS}
    return _rename(state, OFFICIAL_TO_TIMM)


def load_encoder_weights(model: nn.Module, path: str | Path) -> None:
    """Load DINOv2 weights (official ``dinov2_vit*14_pretrain.pth`` or timm layout) into ``model.encoder``."""
    encoder = model.encoder if hasattr(model, "encoder") else model
    _load_strict(encoder, encoder_state_from(read_checkpoint(path)), f"encoder checkpoint {path}")
    log.info("loaded encoder weights from %s", path)


def segmentor_state_from(raw: Mapping) -> dict[str, torch.Tensor]:
    """Our checkpoints ({'model': ...} or a bare state dict) and the authors' released UniMatch V2 ones."""
    state = raw["model"] if isinstance(raw.get("model"), Mapping) else raw
    state = _strip_prefix(state, "module.")
    encoder_prefixes = ("backbone.", "encoder.")
    encoder = {
        key.split(".", 1)[1]: value for key, value in state.items() if key.startswith(encoder_prefixes)
    }
    rest = {key: value for key, value in state.items() if not key.startswith(encoder_prefixes)}
    encoder = {"encoder." + key: value for key, value in encoder_state_from(encoder).items()}
    return {**encoder, **_rename(rest, RELEASED_HEAD_TO_OURS)}


def _check_class_count(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """The most common mismatch gets its own message, in the config's terms."""
    theirs, ours = state.get(CLASSIFIER_WEIGHT), model.state_dict().get(CLASSIFIER_WEIGHT)
    if theirs is not None and ours is not None and theirs.shape[0] != ours.shape[0]:
        raise CheckpointError(
            f"{source} predicts {theirs.shape[0]} classes but dataset.nclass is {ours.shape[0]}; "
            "use a checkpoint trained on this dataset or set dataset.nclass to match"
        )


def load_segmentor_weights(model: nn.Module, path: str | Path, key: str = "model") -> None:
    """Load a whole segmentor; ``key`` picks the entry of our training checkpoints ('model' or 'ema')."""
    raw = read_checkpoint(path)
    if key != "model" and key in raw:
        raw = {"model": raw[key]}
    state, source = segmentor_state_from(raw), f"segmentor checkpoint {path}"
    _check_class_count(model, state, source)
    _load_strict(model, state, source)
    log.info("loaded segmentor weights from %s", path)
