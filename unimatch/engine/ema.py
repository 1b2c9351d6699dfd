"""EMA teacher: theta_t <- gamma * theta_t + (1 - gamma) * theta_s over parameters and buffers."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(iteration: int, max_decay: float = 0.996) -> float:
    """gamma = min(1 - 1 / (iter + 1), max_decay), iter counted from 0 (so the first update copies)."""
    return min(1.0 - 1.0 / (iteration + 1), max_decay)


@torch.no_grad()
def update_ema(student: nn.Module, teacher: nn.Module, decay: float) -> None:
    """In-place EMA update with fused multi-tensor ops (one kernel launch per group, no host sync)."""
    teacher_params = [p for p in teacher.parameters()]
    student_params = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(teacher_params, student_params, 1.0 - decay)
    float_buffers = [
        (t, s) for t, s in zip(teacher.buffers(), student.buffers()) if t.dtype.is_floating_point
    ]
    if float_buffers:
        torch._foreach_lerp_([t for t, _ in float_buffers], [s.detach() for _, s in float_buffers], 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if not t.dtype.is_floating_point:
            t.copy_(s)
