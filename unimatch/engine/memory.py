"""Peak memory of training steps: the CUDA allocator's own peak on a GPU, the peak of live tensor bytes on a CPU.

A CPU has no allocator statistics; :class:`LiveTensorBytes` counts the bytes of every tensor storage alive
(those adopted at the start and those any operator creates, backward included) and keeps the maximum, which
is what ``torch.cuda.max_memory_allocated`` reports on a GPU for the same computation, less the allocator's
rounding.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

GIB = 1024**3


class LiveTensorBytes(TorchDispatchMode):
    """While active, the bytes of live tensor storages (``current``) and their maximum (``peak``)."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._storages: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def adopt(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that exist already (weights, gradients, optimizer state) until they are freed."""
        for tensor in tensors:
            self._track(tensor)

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta" or tensor.is_sparse:
            return
        storage = tensor.untyped_storage()
        if storage in self._storages:
            return
        size = storage.nbytes()
        self._storages[storage] = size
        weakref.finalize(storage, self._free, size)
        self.current += size
        self.peak = max(self.peak, self.current)

    def _free(self, size: int) -> None:
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out


@dataclass(frozen=True)
class StepMeasurement:
    peak_bytes: int  # the highest memory in use during the measured steps
    seconds: float  # mean wall time of a measured step

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB


def measure_steps(
    step: Callable[[], None],
    device: torch.device,
    resident: Callable[[], Iterable[torch.Tensor]],
    warmup: int = 1,
    steps: int = 2,
) -> StepMeasurement:
    """Peak memory and mean time of ``steps`` calls of ``step`` after ``warmup`` calls (which create the
    optimizer state). ``resident``: the tensors alive after the warm-up (counted on a CPU; a GPU's
    allocator knows them)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        return StepMeasurement(torch.cuda.max_memory_allocated(device), (time.perf_counter() - started) / steps)
    with LiveTensorBytes() as tracker:
        tracker.adopt(resident())
        started = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = (time.perf_counter() - started) / steps
    return StepMeasurement(tracker.peak, seconds)
