"""DALI backend: the file reader shuffles and shards the file list, each image is decoded once
(``mixed`` nvJPEG on a GPU, ``cpu`` operators with ``device_id=None`` otherwise), then n
random-resized-crops per resolution group and a random flip; uint8 out, channels-last as DALI
makes it, through DALI's PyTorch plugin.

Filter: DALI's default, linear (triangle) with antialiasing when down-scaling, not the cubic of
the pil and nvjpeg backends: on the 2-core CPU (SSLight CNN recipe, ``benchmarks.loaders``),
views ready went from 1.99x to 2.84x the original SSLight data path, each ratio taken within
its own run (geometry 213 -> 284 images/s).

Randomness: DALI operators draw from the pipeline's seed, not from (seed, epoch, index), so
views are not keyed per sample. What is reproducible: each epoch builds its pipeline with a
seed derived from (seed, epoch), so epoch order and views repeat for the same seed; a run
resumed mid-epoch replays that epoch's stream and skips the batches already trained.
"""

from __future__ import annotations

import numpy as np
import torch

from loaders.batch import Batch, channels_last_views
from loaders.sampler import batches_per_epoch

try:
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError:  # the optional extra 'dali'
    fn = None

READER = "reader"


def available() -> bool:
    return fn is not None


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


def _pipeline(files, groups, rank, world, device_type):
    # the reader's "labels" are sample indices, so batches carry their dataset indices
    encoded, index = fn.readers.file(files=files, labels=list(range(len(files))), random_shuffle=True,
                                     shard_id=rank, num_shards=world, name=READER)
    images = fn.decoders.image(encoded, device="mixed" if device_type == "cuda" else "cpu",
                               output_type=types.RGB)
    views = []
    for group in groups:
        for _ in range(group.n):
            view = fn.random_resized_crop(images, size=(group.size, group.size), random_area=list(group.scale),
                                          random_aspect_ratio=list(group.ratio), interp_type=types.INTERP_LINEAR,
                                          antialias=True)
            views.append(fn.flip(view, horizontal=fn.random.coin_flip(probability=0.5)))
    # on a GPU the indices join the views there, so the labels are looked up on the device
    return (*views, index.gpu() if device_type == "cuda" else index)


class DaliLoader:
    works_in_caller = False  # DALI's pipeline runs ahead on its own threads (prefetch_queue_depth)
    def __init__(self, split, groups, batch_size, seed, device, workers, rank=0, world=1):
        if not available():
            raise RuntimeError("data.loader='dali' needs NVIDIA DALI: pip install -e '.[dali]'")
        self.split, self.groups, self.batch_size, self.seed = split, groups, batch_size, seed
        self.device, self.workers, self.rank, self.world = device, max(1, workers), rank, world
        self.labels = torch.tensor(split.labels, device=device)  # on the device once, indexed there
        self.names = [f"v{i}" for i in range(sum(g.n for g in groups))] + ["index"]

    def batches_per_epoch(self) -> int:
        return batches_per_epoch(len(self.split), self.batch_size, self.world)

    def _iterator(self, epoch: int):
        cuda = self.device.type == "cuda"
        pipe = pipeline_def(_pipeline)(
            self.split.files, self.groups, self.rank, self.world, self.device.type,
            batch_size=self.batch_size, num_threads=self.workers, seed=epoch_seed(self.seed, epoch),
            device_id=(self.device.index or 0) if cuda else None, prefetch_queue_depth=2,
        )
        pipe.build()
        return DALIGenericIterator([pipe], self.names, reader_name=READER, last_batch_policy=LastBatchPolicy.DROP)

    def epoch(self, epoch: int, skip_batches: int = 0):
        iterator = self._iterator(epoch)
        for b, out in enumerate(iterator):
            if b >= self.batches_per_epoch():
                break
            if b < skip_batches:
                continue
            data = out[0]
            views, start = [], 0
            for g in self.groups:
                # DALI gives (B, S, S, 3) per view
                group = channels_last_views(torch.stack([data[f"v{start + v}"] for v in range(g.n)]))
                views.append(group.to(self.device, non_blocking=True))
                start += g.n
            indices = data["index"].view(-1).long()  # on the device already
            yield Batch(views, self.labels[indices], indices)
