"""AllSpark's module (SPEC §12): channel-wise cross-attention on the encoder's last level, between encoder
and decoder, with the class-wise semantic memory (S-Mem) filled by channel-wise semantic grouping (CSG).

Training batches hold labeled images first, then unlabeled ones. The unlabeled tokens attend over their own
channels; the labeled tokens are "reborn" from the unlabeled ones: each labeled query channel attends over
the channels of every unlabeled image of the batch, or of the memory once it is switched on. Attention is
over channels (C x C maps, no 1/sqrt(d) scaling), normalised by an InstanceNorm without affine before the
softmax. Evaluation has no memory and no batch partners: every image is its own unlabeled partner (the
reference duplicates the batch; at its validation batch of 1 this is the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _attend(scores: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
    """psi (InstanceNorm without affine over each map of the last two dims), softmax over the last, dropout."""
    maps = scores if scores.dim() == 4 else scores.unsqueeze(1)
    weights = F.instance_norm(maps).softmax(dim=-1)
    return dropout(weights if scores.dim() == 4 else weights.squeeze(1))


def _all_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every rank concatenated in rank order (itself when not distributed): each rank then
    writes the same memory, so the replicas stay equal."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class ChannelAttention(nn.Module):
    """The two attentions of the reference ``CrossAttnMem``: ``heads`` heads, each the full width C."""

    def __init__(self, channels: int, heads: int, dropout: float):
        super().__init__()
        self.channels, self.heads = channels, heads
        width = channels * heads
        self.q_u, self.k_u, self.v_u, self.q_l2u, self.k_l2u, self.v_l2u = (
            nn.Linear(channels, width, bias=False) for _ in range(6)
        )
        self.out_u = nn.Linear(width, channels, bias=False)
        self.out_l2u = nn.Linear(width, channels, bias=False)
        self.attn_dropout = nn.Dropout(dropout)
        self.proj_dropout = nn.Dropout(dropout)

    def unlabeled(self, emb: torch.Tensor) -> torch.Tensor:
        """Channel self-attention per head: (B, N, C) -> (B, N, C)."""
        batch, tokens, _ = emb.shape

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, N, C*h) -> (B, h, N, C)
            return x.view(batch, tokens, self.heads, self.channels).transpose(1, 2)

        q, k, v = split(self.q_u(emb)), split(self.k_u(emb)), split(self.v_u(emb))
        weights = _attend(q.transpose(-1, -2) @ k, self.attn_dropout)  # (B, h, C, C)
        out = weights @ v.transpose(-1, -2)  # (B, h, C, N)
        out = out.permute(0, 3, 2, 1).reshape(batch, tokens, -1)  # the reference's (C, h) channel order
        return self.proj_dropout(self.out_u(out))

    def labeled(self, emb: torch.Tensor, sources: torch.Tensor, pooled: bool) -> torch.Tensor:
        """Labeled queries (B, N, C) over ``sources`` (S, N, C): with ``pooled`` every query channel (all C*h
        together) attends over the channels of all S sources, concatenated; otherwise source i serves query i."""
        q = self.q_l2u(emb).transpose(1, 2)  # (B, C*h, N)
        k, v = self.k_l2u(sources), self.v_l2u(sources)  # (S, N, C*h)
        if pooled:
            k = k.transpose(0, 1).reshape(1, k.shape[1], -1)  # (1, N, S*C*h), source-major
            v = v.transpose(0, 1).reshape(1, v.shape[1], -1)
        weights = _attend(q @ k, self.attn_dropout)  # (B, C*h, S*C*h)
        out = (weights @ v.transpose(1, 2)).transpose(1, 2)  # (B, N, C*h)
        return self.proj_dropout(self.out_l2u(out))


class AllSpark(nn.Module):
    """Replaces the last feature level: map_in (1x1 conv + GELU) -> tokens -> LayerNorm -> attention ->
    + residual -> LayerNorm -> map_out (1x1 conv + GELU). ``memory`` (num_class, C, tokens) holds C slots per
    class, each one LayerNorm-ed unlabeled channel of the training grid; ``pointer`` is each class's FIFO
    position. Both are state, not weights: the EMA copies them (``ema_copied_buffers``)."""

    ema_copied_buffers = ("memory", "pointer")

    def __init__(self, channels: int, num_class: int, tokens: int, heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.map_in = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU())
        self.attn_norm = nn.LayerNorm(channels, eps=1e-6)
        self.attention = ChannelAttention(channels, heads, dropout)
        self.encoder_norm = nn.LayerNorm(channels, eps=1e-6)
        self.map_out = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU())
        for module in self.attention.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
        self.register_buffer("memory", torch.randn(num_class, channels, tokens))
        self.register_buffer("pointer", torch.zeros(num_class, dtype=torch.long))

    def forward(
        self,
        maps: Sequence[torch.Tensor],
        labeled: int | None = None,
        guide: torch.Tensor | None = None,
        use_memory: bool = False,
    ) -> list[torch.Tensor]:
        """``maps`` with the last level refined. Training: the first ``labeled`` images are labeled, the rest
        unlabeled; ``guide`` holds the unlabeled images' eval-mode logits (for CSG); ``use_memory`` lets
        the labeled images attend over the memory instead of the batch. Evaluation: per image, no memory."""
        x = maps[-1]
        batch, channels, height, width = x.shape
        tokens = self.map_in(x).flatten(2).transpose(1, 2)  # (B, N, C)
        emb = self.attn_norm(tokens)
        if self.training:
            if labeled is None or guide is None:
                raise ValueError(
                    "AllSpark trains on labeled + unlabeled batches: pass `labeled` and the unlabeled `guide` logits"
                )
            emb_l, emb_u = emb[:labeled], emb[labeled:]
            with torch.no_grad():
                self.remember(emb_u, guide, (height, width))
            sources = self.memory.transpose(1, 2) if use_memory else emb_u
            out = torch.cat(
                (self.attention.labeled(emb_l, sources.to(emb.dtype), pooled=True), self.attention.unlabeled(emb_u))
            )
        else:
            out = self.attention.labeled(emb, emb, pooled=False)
        out = self.encoder_norm(out + tokens).transpose(1, 2).reshape(batch, channels, height, width)
        return [*maps[:-1], self.map_out(out)]

    @torch.no_grad()
    def remember(self, emb_u: torch.Tensor, guide: torch.Tensor, grid: tuple[int, int]) -> None:
        """CSG: the guide logits resized to the token grid; each channel joins the class whose map it is most
        cosine-similar to; each image's channels are enqueued in their classes' FIFOs."""
        if grid[0] * grid[1] != self.memory.shape[-1]:
            raise ValueError(
                f"AllSpark's memory holds {self.memory.shape[-1]} tokens per channel (the training crop, "
                f"dataset.crop_size); this batch has a {grid[0]}x{grid[1]} grid"
            )
        maps = F.interpolate(guide.float(), size=grid, mode="bilinear", align_corners=False).flatten(2)  # (B, K, N)
        similarity = F.normalize(maps, dim=-1) @ F.normalize(emb_u.float(), dim=1)  # (B, K, C)
        classes = _all_ranks(similarity.argmax(dim=1))
        features = _all_ranks(emb_u.float().transpose(1, 2).contiguous())  # (B, C, N)
        for image_classes, image_features in zip(classes, features):
            self.enqueue(image_features, image_classes)

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, classes: torch.Tensor) -> None:
        """Write channel i (``features[i]``, a length-N vector) at its class's pointer, the channels of a class
        in channel order, wrapping around; the pointers move on by the channels written."""
        slots = self.memory.shape[1]
        counts = F.one_hot(classes, self.memory.shape[0])  # (C, K)
        rank = (counts.cumsum(0) - 1).gather(1, classes[:, None]).squeeze(1)  # position among its class's channels
        self.memory[classes, (self.pointer[classes] + rank) % slots] = features.to(self.memory.dtype)
        self.pointer.copy_((self.pointer + counts.sum(0)) % slots)
