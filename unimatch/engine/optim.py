"""AdamW (or SGD with momentum) with an encoder group and a decoder group (lr x multiplier), and the poly (or
FixMatch's cosine) schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..models import Segmentor
from ..settings import TrainConfig


def build_optimizer(model: Segmentor, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": model.decoder_parameters(), "lr": cfg.lr * cfg.lr_multiplier, "base_lr": cfg.lr * cfg.lr_multiplier}
    ]
    encoder_params = model.encoder_parameters()
    if encoder_params:  # empty when the encoder is frozen
        groups.insert(0, {"params": encoder_params, "lr": cfg.lr, "base_lr": cfg.lr})
    fused = all(p.is_cuda for group in groups for p in group["params"]) or None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=fused)


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    return base_lr * (1.0 - iteration / total) ** power


def _apply_lr(optimizer: torch.optim.Optimizer, rate: Callable[[float], float]) -> float:
    """Every group's lr from its base lr; returns the encoder-group (first) lr."""
    for group in optimizer.param_groups:
        group["lr"] = rate(group["base_lr"])
    return optimizer.param_groups[0]["lr"]


def set_poly_lr(optimizer: torch.optim.Optimizer, iteration: int, total: int, power: float) -> float:
    """Apply lr * (1 - iter/total)^power to every group; returns the encoder-group (first) lr."""
    return _apply_lr(optimizer, lambda base: poly_lr(base, iteration, total, power))


def cosine_lr(base_lr: float, iteration: int, total: int) -> float:
    """FixMatch's cosine decay: base_lr x cos(7 pi k / (16 K)) (not to zero: 0.2 x base_lr at the end)."""
    return base_lr * math.cos(7.0 * math.pi * iteration / (16.0 * total))


def set_lr(optimizer: torch.optim.Optimizer, iteration: int, total: int, cfg: TrainConfig) -> float:
    """The ``train.lr_schedule`` learning rate of every group at ``iteration``; returns the first group's."""
    if cfg.lr_schedule == "poly":
        return set_poly_lr(optimizer, iteration, total, cfg.poly_power)
    return _apply_lr(optimizer, lambda base: cosine_lr(base, iteration, total))
