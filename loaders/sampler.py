"""Epoch order: a seeded permutation per epoch, sharded by rank, resumable mid-epoch."""

from __future__ import annotations

import numpy as np


def batches_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Full batches per epoch on each of ``world`` ranks; the remainder is dropped, so every rank
    takes the same number of steps."""
    return (n // world) // batch_size


class EpochBatchSampler:
    """Yields lists of (epoch, sample index); call :meth:`set_epoch` before each pass.

    Each rank takes every ``world``-th sample of the epoch's permutation, so ranks see
    disjoint samples; the last incomplete batch is dropped so every rank takes equal steps.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if n // world < batch_size:
            raise ValueError(f"train.batch_size={batch_size}: larger than the {n // world} images per rank")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def batches_per_epoch(self) -> int:
        """Full batches in a whole epoch, whatever was skipped on resume."""
        return batches_per_epoch(self.n, self.batch_size, self.world)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.skip

    def indices(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        per_rank = self.n // self.world
        return order[self.rank::self.world][:per_rank]

    def __iter__(self):
        mine = self.indices(self.epoch)
        for b in range(self.skip, len(mine) // self.batch_size):
            chunk = mine[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in chunk]
