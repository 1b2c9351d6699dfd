"""Foundation pre-training routes that see more than thirteen shapes (issue 26's levers).

* :class:`TokenRoute` (breadth): every patch token of the encoder predicts the class histogram of its own
  pixels (soft cross-entropy through one linear layer) on a corpus of hundreds of procedural shape classes.
  Every patch is supervised, at the cost of the encoder alone: no dense decoder, so it runs several times
  faster per image than the DPT route and can afford the corpus's breadth.
* :class:`DinoRoute` (self-distillation, no labels): DINO's multi-crop self-distillation of the class
  token (two global 112 px views teach each other and four local 56 px views) plus iBOT's masked
  patch-token self-distillation (a global view with 30 % of its patches masked predicts the teacher's
  prototype distribution of the unmasked view), on unlabeled images of the benchmark's world drawn from a
  seed stream no benchmark image uses. Teacher: EMA of the student (momentum 0.994 -> 1, cosine),
  centred and sharpened (temperature 0.04, warmed up from 0.07); student temperature 0.1; 1024 prototypes.

Both apply a colour augmentation (channel permutation for hue, brightness, contrast, grey) so that features
cannot lean on colour, which the benchmark's classes only loosely follow.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..models.encoders import encoder_entry

PROTOTYPES = 1024
LOCAL_CROPS = 4
PATCH_MASK_RATIO = 0.3
STUDENT_TEMPERATURE = 0.1
TEACHER_TEMPERATURE = (0.07, 0.04)  # warmed up linearly over the first tenth of training
TEACHER_MOMENTUM = 0.994  # rises to 1 on a cosine
CENTER_MOMENTUM = 0.9


def colour_jitter(
    images: torch.Tensor, generator: torch.Generator, p_jitter: float = 0.8, p_grey: float = 0.2
) -> torch.Tensor:
    """Normalised (B, 3, H, W) images with, per image, a random channel order, brightness and contrast in
    [0.6, 1.4] (probability ``p_jitter``) and full desaturation (``p_grey``); returned normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    pixels = images * std + mean
    batch = images.shape[0]
    jitter = torch.rand(batch, generator=generator) < p_jitter
    orders = torch.stack([torch.randperm(3, generator=generator) if j else torch.arange(3) for j in jitter.tolist()])
    pixels = torch.gather(pixels, 1, orders.to(images.device)[:, :, None, None].expand_as(pixels))
    scale = lambda: torch.where(jitter, 0.6 + 0.8 * torch.rand(batch, generator=generator), torch.ones(batch))  # noqa: E731
    brightness, contrast = scale().to(images.device).view(-1, 1, 1, 1), scale().to(images.device).view(-1, 1, 1, 1)
    centre = pixels.mean(dim=(1, 2, 3), keepdim=True)
    pixels = ((pixels - centre) * contrast + centre) * brightness
    grey = (torch.rand(batch, generator=generator) < p_grey).to(images.device).view(-1, 1, 1, 1)
    pixels = torch.where(grey, pixels.mean(dim=1, keepdim=True).expand_as(pixels), pixels)
    return (pixels.clamp(0, 1) - mean) / std


def resized_crops(
    images: torch.Tensor, out: int, area: tuple[float, float], generator: torch.Generator, copies: int = 1
) -> torch.Tensor:
    """``copies`` random square crops of every image (area fraction of the image in ``area``, anywhere
    inside it, mirrored at random), resized to ``out`` px in one ``grid_sample``: (copies * B, 3, out, out)."""
    batch = images.shape[0] * copies
    side = (area[0] + (area[1] - area[0]) * torch.rand(batch, generator=generator)).sqrt()
    shift = (torch.rand(2, batch, generator=generator) * 2 - 1) * (1 - side)
    mirror = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = side * mirror, shift[0], side, shift[1]
    grid = F.affine_grid(theta.to(images.device), [batch, 3, out, out], align_corners=False)
    return F.grid_sample(images.repeat(copies, 1, 1, 1), grid, mode="bilinear", align_corners=False)


def tokens(
    encoder: nn.Module, images: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
) -> torch.Tensor:
    """The final normalised tokens (B, 1 + h*w, D) of a DINOv2-layout encoder; ``mask`` (B, h*w) replaces
    those patch embeddings by ``mask_token`` (their positions kept)."""
    hidden, _, _ = encoder.embed(images)
    if mask is not None:
        patches = torch.where(mask[..., None], mask_token.to(hidden.dtype), hidden[:, 1:])
        hidden = torch.cat((hidden[:, :1], patches), dim=1)
    for block in encoder.blocks:
        hidden = block(hidden)
    return encoder.norm(hidden)


class Route(nn.Module):
    """A pre-training route: ``.encoder``, a ``loss`` per batch, and ``after_step`` after each optimizer step."""

    labels = True  # whether the route reads the corpus's masks (and so its class names)
    world = False  # True: trains on the unlabeled world pool instead of the corpus

    def after_step(self, iteration: int, total: int) -> None:
        """Nothing by default; a teacher follows its student here."""


class TokenRoute(Route):
    def __init__(self, encoder: str, nclass: int, input_size: int) -> None:
        super().__init__()
        self.encoder = encoder_entry(encoder).build(input_size)
        self.patch = self.encoder.feature_info[-1].stride
        self.nclass = nclass
        self.classifier = nn.Linear(self.encoder.embed_dim, nclass)

    def patch_histograms(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, h*w, nclass): the share of each class among every patch's pixels."""
        batch, height, width = masks.shape
        grid_h, grid_w = height // self.patch, width // self.patch
        rows = torch.arange(grid_h, device=masks.device).repeat_interleave(self.patch)[:, None]
        cols = torch.arange(grid_w, device=masks.device).repeat_interleave(self.patch)[None, :]
        patch = rows * grid_w + cols
        flat = (torch.arange(batch, device=masks.device)[:, None, None] * grid_h * grid_w + patch) * self.nclass + masks
        counts = torch.bincount(flat.flatten(), minlength=batch * grid_h * grid_w * self.nclass)
        counts = counts.view(batch, grid_h * grid_w, self.nclass).float()
        return counts / counts.sum(dim=-1, keepdim=True)

    def loss(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mirror = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
        images = torch.where(mirror.view(-1, 1, 1, 1), images.flip(-1), images)
        masks = torch.where(mirror.view(-1, 1, 1), masks.flip(-1), masks)
        logits = self.classifier(tokens(self.encoder, colour_jitter(images, generator))[:, 1:])
        return -(self.patch_histograms(masks) * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


class ProjectionHead(nn.Module):
    """DINO's head: a 3-layer MLP to a 64-d bottleneck, L2-normalised, then weight-normalised prototypes."""

    def __init__(self, dim: int, hidden: int = 256, bottleneck: int = 64, prototypes: int = PROTOTYPES) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))
        self.prototypes.parametrizations.weight.original0.data.fill_(1)  # DINO fixes the norm to 1
        self.prototypes.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


class DinoRoute(Route):
    labels = False
    world = True

    def __init__(self, encoder: str, input_size: int) -> None:
        super().__init__()
        self.encoder = encoder_entry(encoder).build(input_size)
        self.input_size, self.patch = input_size, self.encoder.feature_info[-1].stride
        dim = self.encoder.embed_dim
        self.head, self.patch_head = ProjectionHead(dim), ProjectionHead(dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.teacher = copy.deepcopy(nn.ModuleList([self.encoder, self.head, self.patch_head])).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, PROTOTYPES))
        self.register_buffer("patch_center", torch.zeros(1, PROTOTYPES))
        self.iteration, self.total = 0, 1

    def _teacher_temperature(self) -> float:
        warm, final = TEACHER_TEMPERATURE
        return final + (warm - final) * max(0.0, 1 - self.iteration / max(1.0, 0.1 * self.total))

    def loss(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        size = self.input_size
        views = colour_jitter(resized_crops(images, size, (0.3, 1.0), generator, copies=2), generator)
        local = colour_jitter(resized_crops(images, size // 2, (0.05, 0.3), generator, copies=LOCAL_CROPS), generator)
        hidden = (
            torch.rand(views.shape[0], (size // self.patch) ** 2, generator=generator).to(images.device)
            < PATCH_MASK_RATIO
        )
        temperature = self._teacher_temperature()
        with torch.no_grad():
            encoder, head, patch_head = self.teacher
            taught = tokens(encoder, views)
            image_logits, patch_logits = head(taught[:, 0]), patch_head(taught[:, 1:])
            image_target = F.softmax((image_logits - self.center) / temperature, dim=-1)
            patch_target = F.softmax((patch_logits - self.patch_center) / temperature, dim=-1)
        student = tokens(self.encoder, views, hidden, self.mask_token)
        image_log = F.log_softmax(self.head(student[:, 0]) / STUDENT_TEMPERATURE, dim=-1)
        local_log = F.log_softmax(self.head(tokens(self.encoder, local)[:, 0]) / STUDENT_TEMPERATURE, dim=-1)
        first, second = image_target.chunk(2)
        pairs = [(first, image_log.chunk(2)[1]), (second, image_log.chunk(2)[0])]
        pairs += [(target, crop) for target in (first, second) for crop in local_log.chunk(LOCAL_CROPS)]
        dino = sum(-(target * log).sum(dim=-1).mean() for target, log in pairs) / len(pairs)
        patch_log = F.log_softmax(self.patch_head(student[:, 1:]) / STUDENT_TEMPERATURE, dim=-1)
        ibot = (-(patch_target * patch_log).sum(dim=-1) * hidden).sum() / hidden.sum().clamp(min=1)
        with torch.no_grad():
            self.center.mul_(CENTER_MOMENTUM).add_((1 - CENTER_MOMENTUM) * image_logits.mean(dim=0, keepdim=True))
            self.patch_center.mul_(CENTER_MOMENTUM).add_((1 - CENTER_MOMENTUM) * patch_logits.mean(dim=(0, 1))[None])
        return dino + ibot

    @torch.no_grad()
    def after_step(self, iteration: int, total: int) -> None:
        self.iteration, self.total = iteration, total
        momentum = 1 - (1 - TEACHER_MOMENTUM) * (math.cos(math.pi * iteration / total) + 1) / 2
        student = [*self.encoder.parameters(), *self.head.parameters(), *self.patch_head.parameters()]
        for learned, followed in zip(student, self.teacher.parameters()):
            followed.mul_(momentum).add_((1 - momentum) * learned.detach())
