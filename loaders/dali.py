"""DALI backend: DALI's own reader shuffles and shards the samples, each image is decoded once
(``mixed`` nvJPEG on a GPU, ``cpu`` operators with ``device_id=None`` otherwise), then n
random-resized-crops per resolution group and a random flip; uint8 out, channels-last as DALI
makes it, through DALI's PyTorch plugin. One graph after the reader (``_views``) serves both
readers:

- a folder (``loaders.datasets.Split``): ``readers.file`` over the file list, which DALI
  shuffles whole each epoch;
- a packed dataset (``loaders.shards.ShardedSplit``, local only): ``readers.webdataset`` over the
  tar shards with the ``.idx`` files packed beside them (nothing is listed or indexed at start),
  reading each sample's image (``.jpg`` or ``.png``) and its ``.index`` member (int64), so batches
  carry their sample indices and the labels are looked up on the device. The shards are read in
  an order drawn from (seed, epoch), the same on every rank; DALI cuts that sample sequence into
  ``world`` contiguous parts (``shard_id=rank``), so ranks are disjoint, and every rank stops
  after ``batches_per_epoch`` (n // world // batch), so all take the same steps. Within a rank,
  samples are shuffled in a buffer of ``shuffle_buffer`` samples (SHUFFLE_BYTES of encoded
  images, at most the rank's share): a rank's whole share where it fits (CIFAR-10), else
  locally, as any stream of shards is (the shards of a packed ImageFolder hold its classes in
  order). A subset that ends inside a shard (``ShardedSplit.subset``) is read through the head
  of that shard's index, written to a private temporary folder. Remote (http) shards are refused
  in one line: DALI reads local files; nvjpeg and pil stream them.

Filter: DALI's default, linear (triangle) with antialiasing when down-scaling, not the cubic of
the pil and nvjpeg backends: on the 2-core CPU (SSLight CNN recipe, ``benchmarks.loaders``),
views ready went from 1.99x to 2.84x the original SSLight data path, each ratio taken within
its own run (geometry 213 -> 284 images/s).

Randomness: DALI operators draw from the pipeline's seed, not from (seed, epoch, index), so
views are not keyed per sample. What is reproducible, for folders and shards alike: each epoch
builds its pipeline (reader included) with a seed derived from (seed, epoch), so the epoch's
order and its views repeat for the same seed, world and batch size (tests/test_dali_shards.py);
a run resumed mid-epoch replays that epoch's stream and skips the batches already trained.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from loaders.batch import Batch, channels_last_views
from loaders.sampler import batches_per_epoch
from loaders.shard_order import shard_permutation
from loaders.shards import ShardedSplit

try:
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError:  # the optional extra 'dali'
    fn = None

READER = "reader"
# encoded bytes DALI's webdataset reader holds in its shuffle buffer (shuffle_buffer)
SHUFFLE_BYTES = 1 << 30
TENSOR_INIT_BYTES = 64


def available() -> bool:
    return fn is not None


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


def _views(encoded, index, groups, device_type):
    """The graph after the reader, one for both readers: decode once, then n
    random-resized-crops per resolution group, each with a random flip; the sample indices last."""
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


def _file_pipeline(files, groups, rank, world, device_type):
    # the reader's "labels" are sample indices, so batches carry their dataset indices
    encoded, index = fn.readers.file(files=files, labels=list(range(len(files))), random_shuffle=True,
                                     shard_id=rank, num_shards=world, name=READER)
    return _views(encoded, index, groups, device_type)


def _shard_pipeline(tars, idxs, groups, rank, world, device_type, reader_seed, initial_fill):
    # each packed sample carries its index as an 8-byte little-endian int64 member (loaders.pack).
    # tensor_init_bytes: what DALI allocates ahead for each output of each buffered sample (1 MiB by
    # default); read from a memory map, a sample only points into it, so allocate next to nothing
    encoded, index = fn.readers.webdataset(
        paths=tars, index_paths=idxs, ext=["jpg;png", "index"], dtypes=[types.UINT8, types.INT64],
        missing_component_behavior="error", random_shuffle=True, initial_fill=initial_fill, seed=reader_seed,
        shard_id=rank, num_shards=world, tensor_init_bytes=TENSOR_INIT_BYTES, name=READER)
    return _views(encoded, index, groups, device_type)


def _index_for(shard, folder) -> str:
    """The DALI index of ``shard``: its own .idx, or, where the split holds only the first samples
    of the tar (``ShardedSplit.subset``), those lines of it, written into ``folder()``."""
    n = len(shard)
    with open(shard.idx) as f:
        header = f.readline().split()
        if int(header[1]) == n:
            return shard.idx
        lines = [next(f) for _ in range(n)]
    path = os.path.join(folder(), os.path.basename(shard.idx))
    with open(path, "w") as f:
        f.write(f"{header[0]} {n}\n")
        f.writelines(lines)
    return path


def shuffle_buffer(split, batch_size: int, world: int) -> int:
    """Samples in DALI's shuffle buffer: SHUFFLE_BYTES of encoded images (by the packed sizes), at
    least a batch, at most a rank's share of the epoch (where the buffer holds a rank's
    whole share, samples are shuffled across the whole share)."""
    n = len(split)
    mean_bytes = max(1, sum(int(np.sum(s.sizes)) for s in split.shards) // max(1, n))
    return int(min(max(SHUFFLE_BYTES // mean_bytes, batch_size), max(1, n // world)))


class DaliLoader:
    works_in_caller = False  # DALI's pipeline runs ahead on its own threads (prefetch_queue_depth)
    def __init__(self, split, groups, batch_size, seed, device, workers, rank=0, world=1):
        if not available():
            raise RuntimeError("data.loader='dali' needs NVIDIA DALI: pip install -e '.[dali]'")
        self.sharded = isinstance(split, ShardedSplit)
        if self.sharded and not split.local:
            raise ValueError(f"data.loader=dali reads local shards only, not {split.root}: "
                             "data.loader=nvjpeg or pil stream shards over HTTP")
        self.split, self.groups, self.batch_size, self.seed = split, groups, batch_size, seed
        self.device, self.workers, self.rank, self.world = device, max(1, workers), rank, world
        self.labels = torch.tensor(split.labels, device=device)  # on the device once, indexed there
        self.names = [f"v{i}" for i in range(sum(g.n for g in groups))] + ["index"]
        if self.sharded:
            self.tars = [s.tar for s in split.shards]
            self.idxs = [_index_for(s, self._private_folder) for s in split.shards]
            self.initial_fill = shuffle_buffer(split, batch_size, world)

    def _private_folder(self) -> str:
        """A temporary folder of this loader's own (the indexes of cut shards), removed with it."""
        if not hasattr(self, "_private"):
            self._private = tempfile.TemporaryDirectory(prefix="sslight-dali-")
        return self._private.name

    def batches_per_epoch(self) -> int:
        return batches_per_epoch(len(self.split), self.batch_size, self.world)

    def _iterator(self, epoch: int):
        cuda = self.device.type == "cuda"
        common = dict(batch_size=self.batch_size, num_threads=self.workers, seed=epoch_seed(self.seed, epoch),
                      device_id=(self.device.index or 0) if cuda else None, prefetch_queue_depth=2)
        if self.sharded:
            order = shard_permutation(len(self.tars), self.seed, epoch)  # the other backends' order
            pipe = pipeline_def(_shard_pipeline)(
                [self.tars[k] for k in order], [self.idxs[k] for k in order], self.groups, self.rank, self.world,
                self.device.type, epoch_seed(self.seed, epoch), self.initial_fill, **common)
        else:
            pipe = pipeline_def(_file_pipeline)(self.split.files, self.groups, self.rank, self.world,
                                                self.device.type, **common)
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
