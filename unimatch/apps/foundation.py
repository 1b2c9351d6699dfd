"""Foundation pre-training: the embedded world's released encoder, trained once on the foundation corpus.

UniMatch V2 refines a pre-trained representation; it does not build one from a few dozen labels. Real
datasets get theirs from DINOv2's weights. The embedded world gets its own from
:class:`~unimatch.data.foundation_corpus.FoundationCorpus` (50k images of other shapes, never a benchmark image
or class), by one of two routes:

* ``supervised``: the encoder with a DPT head segments the corpus's thirteen shapes (the
  ImageNet-supervised premise of UniMatch V1, on a label space disjoint from the benchmark's);
* ``mae``: masked-image modelling on the same images, no labels at all (:mod:`unimatch.apps.mae`'s model).

The result is an encoder state dict in the official DINOv2 key layout that ``model.weights`` loads like any
released checkpoint, a JSON summary (settings, loss curve, held-out corpus mIoU for the supervised route,
wall time) and a figure. Training resumes from ``<out>.ckpt/latest.pth`` and writes its outputs atomically.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.utils.data import DataLoader, Subset

from ..config import RegisteredEncoder, apply_overrides, read_layers, validate_as
from ..data.classes import palette
from ..data.foundation_corpus import CORPUS_SIZE, IMAGE_SIZE, FoundationCorpus, WorldPool, class_names
from ..data.transforms import normalize
from ..engine.checkpoint import previous_path, resume_state, save_checkpoint
from ..engine.probe import ProbeSettings
from ..engine.setup import resolve_device
from ..metrics import ConfusionMatrix, mean_iou
from ..models import build_segmentor
from ..models.encoders.dinov2 import PATCH_SIZE
from ..models.weights import publish_digest
from ..tracking import Tracker
from ..utils.atomic import atomic_write, check_output_dir, write_bytes_atomic, write_text_atomic
from ..utils.progress import progress_bar
from .foundation_routes import DinoRoute, Route, TokenRoute
from .mae import MaskedAutoencoder, descend, random_keep, reconstruction_loss, vit_encoder, warmup_cosine

log = logging.getLogger(__name__)

HELD_OUT = 200  # corpus images after the training range, scored once at the end (supervised route)
CHECKPOINT_ENTRIES = ("model", "optimizer", "iteration", "losses")


class FoundationConfig(BaseModel):
    """``configs/foundation/*.yaml``: what decides the released encoder."""

    model_config = ConfigDict(extra="forbid")
    route: str = "supervised"  # a key of ROUTES
    encoder: RegisteredEncoder = "tiny"
    corpus_size: int = Field(CORPUS_SIZE, ge=1)
    corpus_seed: int = Field(0, ge=0)
    # 0: the thirteen hand-made shapes; N: N procedural shape classes (unimatch.data.shape_families)
    shape_classes: int = Field(0, ge=0)
    iterations: int = Field(3000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_iters: int = Field(100, ge=0)
    mask_ratio: float = Field(0.75, gt=0, lt=1)  # mae route only
    seed: int = 0
    num_workers: int = Field(1, ge=0)  # corpus rendering runs in these processes
    device: str = "auto"
    log_every: int = Field(25, ge=1)
    checkpoint_every: int = Field(250, ge=1)
    output: str = "weights/foundation/embedded-tiny.pth"
    probe: ProbeSettings = ProbeSettings()  # how the result is scored (unimatch.engine.probe)

    @field_validator("route")
    @classmethod
    def _known_route(cls, value: str) -> str:
        if value not in ROUTES:
            raise ValueError(f"unknown route '{value}'; choose one of {sorted(ROUTES)}")
        return value


def load_foundation_config(path: str | Path, overrides: list[str] | None = None) -> FoundationConfig:
    """A foundation YAML plus ``key=value`` overrides, validated; errors name the file and key."""
    return validate_as(FoundationConfig, apply_overrides(read_layers(path), overrides or []), str(path), overrides)


class SupervisedRoute(Route):
    """Segment the corpus's shapes: the encoder plus a DPT head over the foundation label space."""

    def __init__(self, cfg: FoundationConfig, grid: int) -> None:
        super().__init__()
        self.segmentor = build_segmentor(cfg.encoder, len(class_names(cfg.shape_classes)), input_size=grid * PATCH_SIZE)
        self.encoder = self.segmentor.encoder

    def loss(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return F.cross_entropy(self.segmentor(images), masks)


class MaeRoute(Route):
    """Reconstruct hidden patches of corpus images, labels unused."""

    labels = False

    def __init__(self, cfg: FoundationConfig, grid: int) -> None:
        super().__init__()
        self.grid, self.mask_ratio = grid, cfg.mask_ratio
        self.autoencoder = MaskedAutoencoder(
            vit_encoder(cfg.encoder, grid * PATCH_SIZE), grid, decoder_dim=64, decoder_depth=2
        )
        self.encoder = self.autoencoder.encoder

    def loss(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        patches = self.grid * self.grid
        keep = random_keep(images.shape[0], patches, max(1, round(patches * (1 - self.mask_ratio))), generator).to(
            images.device
        )
        return reconstruction_loss(self.autoencoder(images, keep), images, keep)


# Pre-training routes by name (``route:`` in the config): (config, patch grid) -> a Route.
ROUTES: dict[str, Callable[[FoundationConfig, int], Route]] = {
    "supervised": SupervisedRoute,
    "mae": MaeRoute,
    "tokens": lambda cfg, grid: TokenRoute(cfg.encoder, len(class_names(cfg.shape_classes)), grid * PATCH_SIZE),
    "dino": lambda cfg, grid: DinoRoute(cfg.encoder, grid * PATCH_SIZE),
}


def _loader(corpus: FoundationCorpus, cfg: FoundationConfig, start: int) -> DataLoader:
    """Batches of a seeded random order over the corpus (reshuffled every pass), from iteration ``start``:
    the order is a function of (seed, iteration), so a resumed run sees what an uninterrupted one would."""
    per_pass = len(corpus)
    total = cfg.iterations * cfg.batch_size
    order = np.concatenate(
        [np.random.default_rng([cfg.seed, epoch]).permutation(per_pass) for epoch in range(math.ceil(total / per_pass))]
    )[start * cfg.batch_size : total]
    return DataLoader(
        Subset(corpus, order.tolist()),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        persistent_workers=False,
        prefetch_factor=4 if cfg.num_workers else None,
    )


@torch.no_grad()
def held_out_miou(
    route: SupervisedRoute, corpus: FoundationCorpus, held: FoundationCorpus, device: torch.device
) -> float:
    """mIoU (%) on ``held``'s images after ``corpus``'s range, never trained on."""
    confusion = ConfusionMatrix(route.segmentor.nclass, device)
    route.eval()
    for index in range(corpus.size, corpus.size + HELD_OUT):
        image, mask = held[index]
        confusion.update(route.segmentor(image[None].to(device)).argmax(1), mask[None].to(device))
    route.train()
    return mean_iou(confusion.numpy())


def _figure(
    route: SupervisedRoute | MaeRoute, corpus: FoundationCorpus, held: FoundationCorpus, device: torch.device
) -> bytes:
    """PNG: corpus images (held out) with ground truth and prediction (supervised) side by side."""

    colours = palette(256)
    rows = []
    for index in range(corpus.size, corpus.size + 4):
        image, mask = held.render(index)
        cells = [image, colours[mask]]
        if isinstance(route, SupervisedRoute):
            with torch.no_grad():
                route.eval()
                predicted = (
                    route.segmentor(normalize(Image.fromarray(image))[None].to(device)).argmax(1)[0].cpu().numpy()
                )
            cells.append(colours[predicted])
        rows.append(np.concatenate(cells, axis=1))
    buffer = BytesIO()
    grid = np.concatenate(rows, axis=0).astype(np.uint8)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def train_foundation(cfg: FoundationConfig, tracker: Tracker | None = None, progress: bool = True) -> Path:
    """Pre-train the encoder of ``cfg`` on the foundation corpus; write ``cfg.output`` (and its .json/.png)."""

    device = resolve_device(cfg.device)
    output = Path(cfg.output)
    check_output_dir(output.parent, "output")
    checkpoint = output.with_suffix(".ckpt") / "latest.pth"
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    route = ROUTES[cfg.route](cfg, IMAGE_SIZE[1] // PATCH_SIZE).to(device)
    corpus = (WorldPool if route.world else FoundationCorpus)(cfg.corpus_size, cfg.corpus_seed, cfg.shape_classes)
    trained = [parameter for parameter in route.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, losses = 0, []
    resumed = resume_state(checkpoint, entries=CHECKPOINT_ENTRIES)
    if resumed:
        state, source = resumed
        route.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses = int(state["iteration"]), list(state["losses"])
        generator.manual_seed(cfg.seed + start)
        log.info("resuming foundation pre-training from %s at iteration %d/%d", source, start, cfg.iterations)
    if tracker:
        tracker.log_params({f"foundation.{k}": v for k, v in cfg.model_dump().items()})
    started = time.time()
    bar = progress_bar(
        total=cfg.iterations, initial=start, desc=f"foundation {cfg.route}", unit="it", disable=not progress
    )
    iteration = start
    for images, masks in _loader(corpus, cfg, start):
        loss = route.loss(images.to(device), masks.to(device), generator)
        lr = warmup_cosine(cfg.lr, cfg.warmup_iters, cfg.iterations, iteration)
        losses.append(descend(optimizer, loss, lr, f"foundation pre-training at iteration {iteration} (lower lr)"))
        route.after_step(iteration, cfg.iterations)
        iteration += 1
        bar.update()
        if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
            window = float(np.mean(losses[-cfg.log_every :]))
            bar.set_postfix(loss=f"{window:.4f}")
            if tracker:
                tracker.log_metrics(
                    {"foundation/loss": window, "foundation/lr": optimizer.param_groups[0]["lr"]}, step=iteration
                )
        if iteration % cfg.checkpoint_every == 0 and iteration < cfg.iterations:
            save_checkpoint(
                checkpoint,
                {
                    "model": route.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "iteration": iteration,
                    "losses": losses,
                },
                keep_previous=True,
            )
    bar.close()
    summary = {
        "route": cfg.route,
        "encoder": cfg.encoder,
        "settings": cfg.model_dump(mode="json"),
        "classes": class_names(cfg.shape_classes) if route.labels else None,
        "final_loss": float(np.mean(losses[-cfg.log_every :])),
        "seconds_this_session": round(time.time() - started, 1),
        "device": str(device),
        "losses": losses,
    }
    held = type(corpus)(corpus.size + HELD_OUT, corpus.seed, corpus.classes)  # one source load for score and figure
    if isinstance(route, SupervisedRoute):
        summary["held_out_miou"] = round(held_out_miou(route, corpus, held, device), 2)
        if tracker:
            tracker.log_metrics({"foundation/held_out_miou": summary["held_out_miou"]}, step=iteration)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output.with_suffix(".png"), _figure(route, corpus, held, device))
    write_text_atomic(output.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    weights = {k: v.detach().cpu().clone() for k, v in route.encoder.state_dict().items()}
    atomic_write(output, lambda handle: torch.save(weights, handle))
    publish_digest(output)  # SHA256SUMS beside it: loading checks the file against it
    checkpoint.unlink(missing_ok=True)
    previous_path(checkpoint).unlink(missing_ok=True)
    if checkpoint.parent.is_dir() and not any(checkpoint.parent.iterdir()):
        checkpoint.parent.rmdir()
    if tracker:
        for suffix in (".json", ".png"):
            tracker.log_artifact(output.with_suffix(suffix), "foundation")
    log.info("foundation encoder written to %s (final loss %.4f)", output, summary["final_loss"])
    return output
