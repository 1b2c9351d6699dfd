"""What the benchmark scripts share: the device line they print, wall-clock timing that waits for the GPU, and
resident memory of a process tree."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil
import torch

GIB = 1024**3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Mean wall time of ``fn`` over ``iters`` calls after ``warmup`` untimed ones, queued GPU work included."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}"


def verdict(value: float | None, limit: float | None, higher_is_better: bool = False) -> str:
    """'ok' / 'MISSED' against a target, '' when there is no target or no value."""
    if value is None or limit is None:
        return ""
    met = value >= limit if higher_is_better else value <= limit
    return "ok" if met else "MISSED"


def rss(process: psutil.Process) -> tuple[int, int, int]:
    """(main RSS, summed RSS of the live descendant processes, number of them) in bytes."""
    children, count = 0, 0
    for child in process.children(recursive=True):
        try:
            children += child.memory_info().rss
            count += 1
        except psutil.Error:  # a worker that exited between listing and reading
            pass
    return process.memory_info().rss, children, count
