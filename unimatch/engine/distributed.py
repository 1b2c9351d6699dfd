"""Multi-process training under torchrun: one process per GPU, gradients averaged by DistributedDataParallel.

torchrun gives every process RANK, WORLD_SIZE and LOCAL_RANK; :func:`init_distributed` turns them into a
:class:`Distributed` context (a single-process one without torchrun). Each rank reads its own shard of the
sample stream and DDP averages the gradients, so the weights, the EMA teacher and every decision taken
from them are identical on all ranks; rank 0 alone writes checkpoints, figures and MLflow records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError
from ..methods import LabeledBatch, Method, UnlabeledBatch
from .setup import resolve_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Bit patterns of each floating dtype, for an exact checksum.
_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run; the collectives are no-ops in a single process."""

    rank: int
    world: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` averaged over the ranks (SUM then divide: gloo has no AVG)."""
        if not self.enabled:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total / self.world

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        """Whether ``flag`` holds on every rank, as a device tensor (no host synchronisation)."""
        if not self.enabled:
            return flag
        value = flag.to(torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return value.bool()

    def from_main(self, value: bool) -> bool:
        """Rank 0's ``value`` on every rank: decisions read from files only rank 0 writes."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: torch.Tensor) -> list[int]:
        """A scalar integer tensor from every rank, in rank order."""
        if not self.enabled:
            return [int(value)]
        value = value.reshape(1)
        values = [torch.empty_like(value) for _ in range(self.world)]
        dist.all_gather(values, value)
        return [int(v) for v in values]


def _rank_device(name: str, local_rank: int) -> torch.device:
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    if device.index not in (None, local_rank):
        raise ConfigError(
            f"train.device={name} pins one GPU, but under torchrun each process uses cuda:LOCAL_RANK; "
            "set train.device to auto or cuda"
        )
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"process with LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) "
            "are visible: start at most that many processes per node (train.gpus, --nproc_per_node)"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str) -> Distributed:
    """This process's rank, world size and device (``train.device``; cuda:LOCAL_RANK under torchrun).
    Joins torchrun's process group on first use: NCCL on CUDA, gloo on CPU."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Distributed(0, 1, resolve_device(device_name))
    device = _rank_device(device_name, int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Distributed(dist.get_rank(), dist.get_world_size(), device)


def rank_log_level(level: int) -> int:
    """``level`` on global rank 0 (or without torchrun), WARNING on the other ranks: their INFO lines would
    repeat rank 0's."""
    return level if os.environ.get("RANK", "0") == "0" else max(level, logging.WARNING)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class TrainStep(nn.Module):
    """The student and a method's losses as one module whose forward is a whole training step.

    Methods call ``model.features`` and ``model.decode`` rather than ``model(...)``, and DDP only arms its
    gradient all-reduce when its own forward runs: so DDP wraps this module, not the segmentor. The teacher
    is an argument, not a submodule (DDP must not touch it). Returns (loss, labeled, unlabeled, mask ratio)
    as a plain tuple, which DDP can traverse.
    """

    def __init__(self, model: nn.Module, method: Method):
        super().__init__()
        self.model = model
        self.method = method

    def forward(
        self, teacher: nn.Module, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        losses = self.method.step(self.model, teacher, labeled, unlabeled)
        return losses.loss, losses.labeled, losses.unlabeled, losses.mask_ratio


def wrap_for_training(model: nn.Module, method: Method, ctx: Distributed) -> nn.Module:
    """The module the engine calls for a step: DDP over :class:`TrainStep` when there are several ranks.

    Constructing DDP copies rank 0's weights to every rank. ``static_graph``: every step uses the same
    parameters, so the coarsest fusion block's unused ``resConfUnit1`` is found once instead of searching
    the autograd graph at each step. Gradients live in DDP's communication buckets (no extra copy): each
    trained parameter gets a zero gradient of its own layout first, which DDP replaces by its bucket's view,
    so that backward accumulates into the buckets in place from the first step on (a gradient made by
    backward instead would be copied into its bucket, with a warning where its strides differ, as a
    channels-last 1x1 kernel's do). The engine then zeroes gradients in place, never sets them to None. A
    parameter no step uses (DPT's coarsest fusion block's first residual unit) so has a zero gradient, not
    none, and weight decay shrinks it: no output changes.
    """
    step = TrainStep(model, method)
    if not ctx.enabled:
        return step
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)  # keeps the parameter's strides
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=device_ids, gradient_as_bucket_view=True, static_graph=True)


def sync_batch_norm(model: nn.Module, ctx: Distributed) -> nn.Module:
    """SyncBatchNorm under DDP, so that BatchNorm statistics, hence the EMA teacher, agree on every rank."""
    if not (ctx.enabled and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())):
        return model
    if ctx.device.type != "cuda":
        raise ConfigError(
            "model.use_bn=true needs CUDA for multi-process training: SyncBatchNorm, which keeps "
            "the ranks' BatchNorm statistics equal, runs on GPUs only"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


@torch.no_grad()
def weights_checksum(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """An exact fingerprint: the sum of every element's bit pattern x (its position + 1), in wrapping int64
    arithmetic on the tensors' device. Equal tensors give equal sums; a changed bit changes it."""
    total = None
    for tensor in tensors:
        bits = tensor.detach().contiguous().view(_BITS.get(tensor.dtype, tensor.dtype)).flatten().long()
        weighted = (bits * torch.arange(1, bits.numel() + 1, device=bits.device)).sum()
        total = weighted if total is None else total + weighted
    return total
