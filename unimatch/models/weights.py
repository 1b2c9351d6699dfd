"""Strict loading of released encoder checkpoints (each family converts its own layout) and of segmentor
checkpoints (ours and the authors')."""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import UnimatchError
from ..utils.atomic import write_text_atomic
from .encoders import Encoder

log = logging.getLogger(__name__)

RELEASED_HEAD_TO_OURS = ((re.compile(r"^head\.scratch\.output_conv\.2\."), "head.classifier."),)
CLASSIFIER_WEIGHT = "head.classifier.weight"  # (nclass, features, 1, 1)


CHECKSUMS_FILE = "SHA256SUMS"  # beside released weights: "<sha256>  <file name>" lines, as sha256sum writes


class CheckpointError(UnimatchError, ValueError):
    """A checkpoint that cannot be loaded into the model; the message names the file and keys."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def published_digests(folder: str | Path) -> dict[str, str]:
    """File name -> sha256 from ``folder/SHA256SUMS`` (empty when there is none)."""
    manifest = Path(folder) / CHECKSUMS_FILE
    if not manifest.is_file():
        return {}
    lines = (line.split(maxsplit=1) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip())
    return {name.strip().lstrip("*"): digest for digest, name in lines}


def publish_digest(path: str | Path) -> str:
    """Record ``path``'s sha256 in the SHA256SUMS beside it (other entries kept); returns the digest."""

    path = Path(path)
    digests = {**published_digests(path.parent), path.name: sha256_file(path)}
    write_text_atomic(path.parent / CHECKSUMS_FILE, "".join(f"{d}  {n}\n" for n, d in sorted(digests.items())))
    return digests[path.name]


def verify_published(path: str | Path) -> None:
    """Weights listed in the SHA256SUMS beside them must exist and match it (a released file that was
    replaced, truncated or not rebuilt fails here, with the digest it should have)."""
    path = Path(path)
    expected = published_digests(path.parent).get(path.name)
    if expected is None:
        return
    manifest = path.parent / CHECKSUMS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"weights file {path} is missing; expected sha256 {expected} (from {manifest}); "
            "rebuild it with `dvc repro foundation` or train with model.weights=null"
        )
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(
            f"weights file {path} has sha256 {actual}, expected {expected} (from {manifest}); "
            "restore it (`git checkout -- {path}`) or rebuild it with `dvc repro foundation`".replace(
                "{path}", str(path)
            )
        )


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (OpenAI's CLIP releases, e.g. ViT-B-16.pt), which ``weights_only`` loading refuses."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load`` with ``weights_only=True`` (a TorchScript archive: its state dict, through ``torch.jit.load``,
    which runs no pickled Python) and a clear error for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if is_torchscript(path):
            return dict(torch.jit.load(path, map_location="cpu").state_dict())
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
        return {key[len(prefix) :]: value for key, value in state.items()}
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


def encoder_state_from(raw: Mapping, encoder: Encoder) -> dict[str, torch.Tensor]:
    """A released encoder file (bare, or under 'model' / 'state_dict', with 'module.' or 'backbone.' prefixes)
    in ``encoder``'s key names, by its family's conversion."""
    state = raw
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    state = _strip_prefix(_strip_prefix(state, "module."), "backbone.")
    return encoder.convert_checkpoint(state)


def load_encoder_weights(model: nn.Module, path: str | Path) -> None:
    """Load released encoder weights (e.g. ``dinov2_vitb14_pretrain.pth``, ``mit_b5.pth``) into ``model.encoder``."""
    encoder = model.encoder if hasattr(model, "encoder") else model
    verify_published(path)
    _load_strict(encoder, encoder_state_from(read_checkpoint(path), encoder), f"encoder checkpoint {path}")
    log.info("loaded encoder weights from %s", path)


def segmentor_state_from(raw: Mapping, model: nn.Module) -> dict[str, torch.Tensor]:
    """Our checkpoints ({'model': ...} or a bare state dict) and the authors' released UniMatch V2 ones."""
    state = raw["model"] if isinstance(raw.get("model"), Mapping) else raw
    state = _strip_prefix(state, "module.")
    encoder_prefixes = ("backbone.", "encoder.")
    encoder = {key.split(".", 1)[1]: value for key, value in state.items() if key.startswith(encoder_prefixes)}
    rest = {key: value for key, value in state.items() if not key.startswith(encoder_prefixes)}
    encoder = {"encoder." + key: value for key, value in model.encoder.convert_checkpoint(encoder).items()}
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
    state, source = segmentor_state_from(raw, model), f"segmentor checkpoint {path}"
    _check_class_count(model, state, source)
    _load_strict(model, state, source)
    log.info("loaded segmentor weights from %s", path)
