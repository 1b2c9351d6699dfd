"""Building the pieces of a run from its configuration: device, precision, model, data loaders."""

from __future__ import annotations

import logging
import warnings

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import ExperimentConfig, ModelConfig
from ..errors import ConfigError
from ..methods import method_class
from ..models import Segmentor, encoder_entry, load_encoder_weights, load_segmentor_weights
from ..settings import MethodSettings
from ..tasks import TASKS, ClassificationTask, SegmentationTask

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: '{name}' is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"train.device: '{name}' but CUDA is not available on this machine; use auto or cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"train.device: '{name}' but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device: '{name}' but MPS is not available on this machine; use auto or cpu")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA ('auto' or 'bf16'); full fp32 otherwise."""
    if amp == "fp32" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def build_model(
    model_cfg: ModelConfig,
    nclass: int,
    input_size: int,
    method: MethodSettings | None = None,
    quiet: bool = False,
    task: ClassificationTask | SegmentationTask | None = None,
) -> Segmentor:
    """The segmentor for training crops of ``input_size`` with its initial weights: a whole checkpoint,
    released encoder weights, or (loudly) random. ``method``: the config's method section, whose method
    may change the architecture (``Method.build_model``) before any weights load, so that training,
    evaluation and prediction build the same model from a config. ``quiet`` skips the
    random-initialisation warning when the caller loads a checkpoint next. ``task``: the task whose network
    it is (its ``build_network``: the siamese change detector, a classifier; None: a segmentor)."""
    model = (task or TASKS["segmentation"]).build_network(model_cfg, nclass, input_size)
    if method is not None:
        model = method_class(method.name).build_model(model, method, input_size)
    entry = encoder_entry(model_cfg.encoder)
    if model_cfg.init_checkpoint:
        load_segmentor_weights(model, model_cfg.init_checkpoint)
    elif model_cfg.weights:
        load_encoder_weights(model, model_cfg.weights)
    elif model_cfg.hub_download and entry.hub:
        hub_model = torch.hub.load(*entry.hub)
        model.encoder.load_state_dict(model.encoder.convert_checkpoint(hub_model.state_dict()))
    elif not quiet and not model_cfg.network:  # a wide ResNet trains from scratch (SPEC §9)
        hint = entry.weights_hint
        warnings.warn(
            f"model.weights is not set: the '{model_cfg.encoder}' encoder is RANDOMLY INITIALISED. "
            f"Point model.weights at its released weights ({hint or 'a checkpoint of this encoder'}) for real results, "
            "or pre-train one without labels with pretrain.method=mae.",
            stacklevel=2,
        )
    if model_cfg.frozen:
        model.freeze_encoder()
    return model


def optimize_for_device(model: Segmentor, device: torch.device) -> Segmentor:
    """Move ``model`` to ``device``. The decoder's activations are channels-last (see ``DPTHead.fuse``); on
    CUDA its weights are made channels-last too, so that cuDNN runs NHWC kernels without converting the
    weights at every call (CPU results stay bit-identical). The encoder's attention is timm's fused
    scaled-dot-product attention."""
    if device.type == "cuda":
        for module in model.decoder_modules():
            module.to(memory_format=torch.channels_last)
    return model.to(device)


def compile_blocks(model: Segmentor) -> None:
    """``torch.compile`` the encoder's expensive parts in place (a ViT's blocks): parameters and state-dict
    keys are unchanged, and the methods' ``features()`` calls run them compiled. The DPT fusion blocks stay
    eager: each has its own sizes and skip input, which would exhaust dynamo's recompile limit for little
    gain on cuDNN convs."""
    model.encoder.compile_blocks()


def _one_thread(worker_id: int) -> None:
    """OpenCV (the augmentations) would start a thread per core in every worker: N workers x cores."""
    import cv2

    cv2.setNumThreads(1)


def make_loader(
    dataset: Dataset, sampler: Sampler, batch: int, workers: int, device: torch.device, seed: int
) -> DataLoader:
    """Pinned memory on CUDA, persistent prefetching workers; its own generator so that creating the
    loader draws nothing from the global RNG (resume must replay the same model randomness)."""
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_one_thread if workers > 0 else None,
    )


def describe(cfg: ExperimentConfig) -> str:
    frozen = " (frozen)" if cfg.model.frozen else ""
    return f"{cfg.method.name} | {cfg.model.encoder}{frozen} | {cfg.dataset.name} {cfg.split.labeled:g} labeled"
