"""Where a training loader's samples come from, and in what order: a folder's files by a seeded
permutation per epoch (:mod:`loaders.sampler`), or a packed dataset's shards streamed in the
order of :mod:`loaders.shard_order`. Both give the backends the same two things: a batch sampler
of (epoch, sample index) lists and a reader of each sample's encoded bytes."""

from __future__ import annotations

from loaders.sampler import EpochBatchSampler
from loaders.shard_order import ShardBatchSampler, ShardCursor, ShardPlan
from loaders.shards import ShardedSplit


class FileReader:
    """A folder's files, each read whole when its batch comes."""

    def __init__(self, split):
        self.split = split

    def read(self, epoch: int, index: int) -> bytes:
        return self.split.read(index)


def epoch_source(split, batch_size: int, seed: int, rank: int, world: int, workers: int):
    """(batch sampler, reader) for ``split``; a packed dataset is cut into one stream per worker."""
    if isinstance(split, ShardedSplit):
        plan = ShardPlan(split, seed, rank, world, workers)
        return ShardBatchSampler(plan, batch_size), ShardCursor(split, plan)
    return EpochBatchSampler(len(split), batch_size, seed, rank, world), FileReader(split)
