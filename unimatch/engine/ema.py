"""EMA teacher: theta_t <- gamma * theta_t + (1 - gamma) * theta_s over parameters and buffers.

A module may name buffers that are state rather than weights in ``ema_copied_buffers`` (AllSpark's
feature memory and its pointers: an average of FIFO contents means nothing): the teacher takes the
student's values of those, as it does for integer buffers, so its state dict stays a usable model."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(iteration: int, max_decay: float = 0.996) -> float:
    """gamma = min(1 - 1 / (iter + 1), max_decay), iter counted from 0 (so the first update copies)."""
    return min(1.0 - 1.0 / (iteration + 1), max_decay)


def copied_buffer_names(model: nn.Module) -> set[str]:
    """Full names of the buffers ``model``'s modules declare in ``ema_copied_buffers``."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in getattr(module, "ema_copied_buffers", ())
    }


@torch.no_grad()
def update_ema(student: nn.Module, teacher: nn.Module, decay: float) -> None:
    """In-place EMA update with fused multi-tensor ops (one kernel launch per group, no host sync)."""
    teacher_params = [p for p in teacher.parameters()]
    student_params = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(teacher_params, student_params, 1.0 - decay)
    copied = copied_buffer_names(student)
    blended, taken = [], []
    for (name, t), s in zip(teacher.named_buffers(), student.buffers()):
        (blended if t.dtype.is_floating_point and name not in copied else taken).append((t, s.detach()))
    if blended:
        torch._foreach_lerp_([t for t, _ in blended], [s for _, s in blended], 1.0 - decay)
    for t, s in taken:
        t.copy_(s)
