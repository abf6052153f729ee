"""Synthetic backend: random uint8 views generated on the device, no I/O; the upper bound
for end-to-end throughput."""

from __future__ import annotations

import torch

from loaders.batch import Batch, channels_last_views
from loaders.sampler import EpochBatchSampler


class SyntheticLoader:
    works_in_caller = False  # random views on the device: nothing worth running ahead
    def __init__(self, split, groups, batch_size, seed, device, workers, rank=0, world=1):
        self.groups, self.seed, self.device = groups, seed, device
        self.labels = torch.tensor(split.labels, device=device)
        self.sampler = EpochBatchSampler(len(split), batch_size, seed, rank, world)
        self.generator = torch.Generator(device=device)

    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch()

    def epoch(self, epoch: int, skip_batches: int = 0):
        self.sampler.set_epoch(epoch, skip_batches)
        for b, chunk in enumerate(self.sampler, start=skip_batches):
            self.generator.manual_seed(hash((self.seed, epoch, b)) & 0x7FFF_FFFF_FFFF_FFFF)
            indices = torch.tensor([i for _, i in chunk], device=self.device)
            views = [channels_last_views(torch.randint(0, 256, (g.n, len(chunk), g.size, g.size, 3),
                                                       dtype=torch.uint8, device=self.device,
                                                       generator=self.generator)) for g in self.groups]
            yield Batch(views, self.labels[indices], indices)
