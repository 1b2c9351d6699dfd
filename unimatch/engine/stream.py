"""A deterministic, resumable stream of training samples.

Every sample position ``g`` in the whole run maps to (epoch, slot); each epoch has its own shuffled
order, and the sample's augmentation RNG is seeded from (seed, stream, g). So the data a run sees does
not depend on the number of workers, and a resumed run continues with exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def epoch_order(count: int, length: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    """``length`` indices into ``count`` items for one epoch: the list tiled when shorter (the labeled
    list repeated to the unlabeled length, as the reference code does), shuffled, cut to ``length``."""
    tiled = np.resize(np.arange(count), max(count, length))
    return np.random.default_rng([seed, stream, epoch]).permutation(tiled)[:length]


@contextmanager
def sample_rng(seed: int, stream: int, position: int):
    """Seed python, numpy and torch for one sample, then put the previous states back, so that loading
    in the main process (num_workers=0) leaves the training RNG untouched."""
    sample_seed = int(np.random.SeedSequence([seed, stream, position]).generate_state(1)[0])
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(sample_seed)
        np.random.seed(sample_seed)
        torch.manual_seed(sample_seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class SampleStream(Dataset):
    def __init__(self, base: Dataset, epoch_length: int, epochs: int, seed: int, stream: int):
        self.base = base
        self.epoch_length = epoch_length
        self.epochs = epochs
        self.seed = seed
        self.stream = stream
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.epoch_length * self.epochs

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, epoch_order(len(self.base), self.epoch_length, self.seed, self.stream, epoch))
        return self._cached[1]

    def __getitem__(self, position: int):
        epoch, slot = divmod(position, self.epoch_length)
        with sample_rng(self.seed, self.stream, position):
            return self.base[int(self._order(epoch)[slot])]


class StreamPositions(Sampler[int]):
    """Positions of one rank's samples from iteration ``start`` on: global batch i holds positions
    [i*B*world, (i+1)*B*world), and rank r takes its contiguous B of them."""

    def __init__(self, start_iter: int, total_iters: int, batch: int, rank: int = 0, world: int = 1):
        self.start_iter, self.total_iters = start_iter, total_iters
        self.batch, self.rank, self.world = batch, rank, world

    def __iter__(self):
        for iteration in range(self.start_iter, self.total_iters):
            first = (iteration * self.world + self.rank) * self.batch
            yield from range(first, first + self.batch)

    def __len__(self) -> int:
        return max(0, self.total_iters - self.start_iter) * self.batch
