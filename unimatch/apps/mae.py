"""Self-supervised pre-training of the encoder by masked-image modelling (MAE), for settings without
DINOv2 weights: the CPU-sized ``tiny`` encoder of the embedded dataset, or a custom dataset.

UniMatch V2's premise is a pre-trained encoder: semi-supervised learning refines a representation, it
does not build one from a few dozen labels. ``pretrain.method: mae`` gives a from-scratch encoder that
premise without labels and without a download: He et al.'s masked autoencoder (75 % of the patches
hidden, a light decoder reconstructs their per-patch normalised pixels) trained on the training
images only (labeled and unlabeled alike, never val). The result is an ordinary encoder checkpoint that
every method loads through ``model.weights``, so methods are compared from the same starting point.

Runs are cached by a digest of everything that decides the weights (pre-training settings, encoder,
crop, image list), resumable from a checkpoint, and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.models.vision_transformer import Block
from torch import nn

from ..config import ExperimentConfig
from ..data import IMAGENET_MEAN, IMAGENET_STD, DataError, read_image
from ..data.layouts import SplitFormat
from ..data.splits import Sample
from ..engine.checkpoint import previous_path, resume_state, save_checkpoint
from ..engine.data import extra_unlabeled_samples, prepare_splits
from ..engine.setup import resolve_device
from ..errors import ConfigError
from ..models.encoders import DINOv2Encoder, build_encoder, interpolate_pos_embed
from ..models.encoders.dinov2 import PATCH_SIZE
from ..tracking import Tracker
from ..utils.atomic import atomic_write, remove_stale_temps, write_bytes_atomic, write_text_atomic
from ..utils.progress import progress_bar

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.pth"
CHECKPOINT_FILE = "latest.pth"
CHECKPOINT_ENTRIES = ("model", "optimizer", "iteration", "generator", "losses")
SUMMARY_FILE = "pretrain.json"
FIGURE_FILE = "reconstructions.png"


def vit_encoder(name: str, input_size: int) -> DINOv2Encoder:
    """The registered encoder ``name``, which must be a DINOv2-layout ViT: MAE hides patch tokens."""
    encoder = build_encoder(name, input_size)
    if not isinstance(encoder, DINOv2Encoder):
        raise ConfigError(
            f"model.encoder: masked-autoencoder pre-training needs a DINOv2-layout ViT (patch tokens); "
            f"'{name}' is not one"
        )
    return encoder


class MaskedAutoencoder(nn.Module):
    """A DINOv2 encoder that sees only the kept patches, and a light decoder that predicts the pixels of
    the hidden ones (normalised per patch, as MAE's best setting)."""

    def __init__(self, encoder: DINOv2Encoder, grid: int, decoder_dim: int, decoder_depth: int):
        super().__init__()
        self.encoder, self.grid = encoder, grid
        self.embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.randn(1, grid * grid, decoder_dim) * 0.02)
        heads = max(1, decoder_dim // 32)
        self.decoder = nn.Sequential(*(Block(decoder_dim, heads, mlp_ratio=4.0) for _ in range(decoder_depth)))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.to_pixels = nn.Linear(decoder_dim, PATCH_SIZE * PATCH_SIZE * 3)

    def forward(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predicted pixels (B, N, 14*14*3) of every patch from the ``keep`` indices (B, K) alone."""
        encoder, batch = self.encoder, images.shape[0]
        tokens = encoder.patch_embed(images).reshape(batch, self.grid * self.grid, -1)
        pos = interpolate_pos_embed(encoder.pos_embed, self.grid, self.grid)
        tokens = torch.gather(tokens + pos[:, 1:], 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        tokens = torch.cat(((encoder.cls_token + pos[:, :1]).expand(batch, -1, -1), tokens), dim=1)
        tokens = encoder.norm(encoder.blocks(tokens))[:, 1:]
        visible = self.embed(tokens)
        full = self.mask_token.expand(batch, self.grid * self.grid, -1).scatter(
            1, keep[..., None].expand_as(visible), visible
        )
        return self.to_pixels(self.decoder_norm(self.decoder(full + self.decoder_pos)))


def patchify(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H/14 * W/14, 14*14*3), row-major patches."""
    batch = images.shape[0]
    patches = images.unfold(2, PATCH_SIZE, PATCH_SIZE).unfold(3, PATCH_SIZE, PATCH_SIZE)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(batch, -1, 3 * PATCH_SIZE * PATCH_SIZE)


def normalise_patches(patches: torch.Tensor) -> torch.Tensor:
    return (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()


def reconstruction_loss(predicted: torch.Tensor, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden patches only, against per-patch normalised pixels."""
    target = normalise_patches(patchify(images))
    hidden = torch.ones(target.shape[:2], device=target.device).scatter(1, keep, 0.0)
    return (((predicted - target) ** 2).mean(-1) * hidden).sum() / hidden.sum()


class CropSampler:
    """Random resized crops (area share U(min_scale, 1), aspect 3/4..4/3) with horizontal flips, drawn from
    one seeded generator so that a resumed run draws the same batches."""

    def __init__(self, images: Sequence[torch.Tensor], crop: int, min_scale: float, generator: torch.Generator):
        self.images, self.crop, self.min_scale, self.generator = images, crop, min_scale, generator
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def _crop(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        area = self._uniform(self.min_scale, 1.0) * height * width
        aspect = math.exp(self._uniform(math.log(3 / 4), math.log(4 / 3)))
        crop_h = min(height, max(1, round(math.sqrt(area / aspect))))
        crop_w = min(width, max(1, round(math.sqrt(area * aspect))))
        top = int(torch.randint(height - crop_h + 1, (), generator=self.generator))
        left = int(torch.randint(width - crop_w + 1, (), generator=self.generator))
        patch = image[None, :, top : top + crop_h, left : left + crop_w].float() / 255
        patch = F.interpolate(patch, size=(self.crop, self.crop), mode="bilinear", align_corners=False, antialias=True)
        return patch.flip(-1) if torch.rand((), generator=self.generator) < 0.5 else patch

    def batch(self, size: int) -> torch.Tensor:
        picks = torch.randint(len(self.images), (size,), generator=self.generator)
        crops = torch.cat([self._crop(self.images[int(i)]) for i in picks])
        return (crops - self.mean) / self.std


def training_images(cfg: ExperimentConfig) -> list[Sample]:
    """Every training image, labeled or not (masks never read), plus the extra unlabeled pools; never val
    (change detection: the A image of every pair)."""
    splits, split_format = prepare_splits(cfg), SplitFormat.of(cfg.dataset.name)
    root = cfg.dataset.root
    samples = split_format.read(splits.labeled, root) + split_format.read(
        splits.unlabeled, root, require_masks=False, allow_empty=True
    )
    samples += extra_unlabeled_samples(cfg)
    unique = sorted({sample.image: sample for sample in samples}.values(), key=lambda s: str(s.image))
    if not unique:
        raise DataError(f"pre-training needs images: the splits of {root} list none")
    return unique


def pretrain_digest(cfg: ExperimentConfig, images: Sequence[Sample]) -> str:
    """What decides the weights: pre-training settings (not where they are stored), encoder, crop, and each
    image's root-relative path and size in bytes (so a moved checkout keeps its cache)."""
    settings = cfg.pretrain.model_dump(mode="json", exclude={"dir"})
    files = [(s.name, s.image.stat().st_size) for s in images]
    identity = {"pretrain": settings, "encoder": cfg.model.encoder, "crop": cfg.dataset.crop_size, "images": files}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def pretrain_dir(cfg: ExperimentConfig, images: Sequence[Sample]) -> Path:
    name = f"{cfg.dataset.name}-{cfg.model.encoder}-{cfg.pretrain.method}-{pretrain_digest(cfg, images)}"
    return Path(cfg.pretrain.dir) / name


def warmup_cosine(base_lr: float, warmup_iters: int, iterations: int, iteration: int) -> float:
    """Linear warm-up, then cosine decay to zero (pre-training schedules)."""
    if iteration < warmup_iters:
        return base_lr * (iteration + 1) / warmup_iters
    progress = (iteration - warmup_iters) / max(1, iterations - warmup_iters)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float, failure: str) -> float:
    """One optimiser step at ``lr`` on a finite ``loss`` (else FloatingPointError: ``failure`` and the value)."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{failure}: loss is {loss.item()}")
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return round(loss.item(), 5)


def _load_images(samples: Sequence[Sample], progress: bool) -> list[torch.Tensor]:
    return [
        torch.from_numpy(read_image(s.image).copy()).permute(2, 0, 1).contiguous()
        for s in progress_bar(samples, desc="load images", unit="img", disable=not progress, leave=False)
    ]


def _figure(model: MaskedAutoencoder, images: torch.Tensor, keep: torch.Tensor, device: torch.device) -> bytes:
    """PNG rows of (input, what the encoder saw, reconstruction), pixels of hidden patches de-normalised
    with the true patch statistics as in the MAE paper's figures."""
    with torch.no_grad():
        predicted = model(images.to(device), keep.to(device)).cpu()
    patches = patchify(images)
    mean, std = patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    hidden = torch.ones(patches.shape[:2]).scatter(1, keep, 0.0)[..., None].bool()
    rebuilt = torch.where(hidden, predicted * std + mean, patches)
    seen = torch.where(hidden, torch.full_like(patches, -1.5), patches)
    grid, size = model.grid, images.shape[-1]

    def unpatchify(p: torch.Tensor) -> np.ndarray:
        p = p.reshape(-1, grid, grid, 3, PATCH_SIZE, PATCH_SIZE).permute(0, 3, 1, 4, 2, 5).reshape(-1, 3, size, size)
        rgb = p * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        return (rgb.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()

    rows = [
        np.concatenate(triple, axis=1) for triple in zip(unpatchify(patches), unpatchify(seen), unpatchify(rebuilt))
    ]
    buffer = BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).resize(
        (3 * size * 2, len(rows) * size * 2), Image.Resampling.NEAREST
    ).save(buffer, format="PNG")
    return buffer.getvalue()


def random_keep(batch: int, patches: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(batch, patches, generator=generator).argsort(1)[:, :keep]


def run_pretraining(
    cfg: ExperimentConfig, out: Path, samples: Sequence[Sample], tracker: Tracker | None = None, progress: bool = True
) -> Path:
    """Train the MAE on ``samples`` and write ``out/encoder.pth``; resumes from ``out/latest.pth``."""

    settings, crop = cfg.pretrain, cfg.dataset.crop_size
    device = resolve_device(cfg.train.device)
    grid = crop // PATCH_SIZE
    keep_count = max(1, round(grid * grid * (1 - settings.mask_ratio)))
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = MaskedAutoencoder(
        vit_encoder(cfg.model.encoder, crop), grid, settings.decoder_dim, settings.decoder_depth
    ).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay
    )
    checkpoint, start, losses = out / CHECKPOINT_FILE, 0, []
    remove_stale_temps(checkpoint)
    resumed = resume_state(checkpoint, entries=CHECKPOINT_ENTRIES)  # falls back to latest.prev.pth
    if resumed:
        state, source = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])  # every random draw of the loop comes from it
        start, losses = state["iteration"], list(state["losses"])
        log.info("resuming pre-training from %s at iteration %d/%d", source, start, settings.iterations)
    sampler = CropSampler(_load_images(samples, progress), crop, settings.min_scale, generator)
    if tracker:
        tracker.log_params({"pretrain.images": len(samples)})
    started = time.time()
    bar = progress_bar(
        total=settings.iterations, initial=start, desc=f"pretrain {settings.method}", unit="it", disable=not progress
    )
    for iteration in range(start, settings.iterations):
        images = sampler.batch(settings.batch_size).to(device, non_blocking=True)
        keep = random_keep(images.shape[0], grid * grid, keep_count, generator).to(device)
        loss = reconstruction_loss(model(images, keep), images, keep)
        lr = warmup_cosine(settings.lr, settings.warmup_iters, settings.iterations, iteration)
        losses.append(descend(optimizer, loss, lr, f"pre-training at iteration {iteration} (lower pretrain.lr)"))
        bar.update()
        if (iteration + 1) % settings.log_every == 0 or iteration + 1 == settings.iterations:
            window = float(np.mean(losses[-settings.log_every :]))
            bar.set_postfix(loss=f"{window:.4f}")
            if tracker:
                tracker.log_metrics(
                    {"pretrain/loss": window, "pretrain/lr": optimizer.param_groups[0]["lr"]}, step=iteration + 1
                )
        if (iteration + 1) % settings.checkpoint_every == 0 and iteration + 1 < settings.iterations:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": iteration + 1,
                "generator": generator.get_state(),
                "losses": losses,
            }
            save_checkpoint(checkpoint, state, keep_previous=True)
    bar.close()
    model.eval()
    figure_images = sampler.batch(4)
    write_bytes_atomic(
        out / FIGURE_FILE, _figure(model, figure_images, random_keep(4, grid * grid, keep_count, generator), device)
    )
    summary = {
        "method": settings.method,
        "encoder": cfg.model.encoder,
        "crop_size": crop,
        "images": len(samples),
        "settings": settings.model_dump(mode="json"),
        "final_loss": float(np.mean(losses[-settings.log_every :])),
        "seconds_this_session": round(time.time() - started, 1),
        "losses": losses,
    }
    write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    encoder_path = out / ENCODER_FILE
    atomic_write(
        encoder_path, lambda handle: torch.save({k: v.cpu() for k, v in model.encoder.state_dict().items()}, handle)
    )
    checkpoint.unlink(missing_ok=True)
    previous_path(checkpoint).unlink(missing_ok=True)
    if tracker:
        tracker.log_artifact(out / FIGURE_FILE, "pretrain")
        tracker.log_artifact(out / SUMMARY_FILE, "pretrain")
    log.info(
        "pre-trained %s encoder written to %s (final loss %.4f)", cfg.model.encoder, encoder_path, summary["final_loss"]
    )
    return encoder_path


def pretrained_encoder(cfg: ExperimentConfig, tracker: Tracker | None = None, progress: bool = True) -> Path:
    """The encoder weights of ``cfg.pretrain``: the cached file when it exists, else pre-trained now."""
    samples = training_images(cfg)
    out = pretrain_dir(cfg, samples)
    cached = out / ENCODER_FILE
    if cached.is_file():
        log.info("using the pre-trained encoder %s", cached)
        return cached
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # a caller's random stream must not depend on the cache
        return run_pretraining(cfg, out, samples, tracker, progress)
