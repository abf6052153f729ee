"""FFCV backend: the split is written once to an FFCV ``.beton`` (cached in the data directory,
keyed on the files' identity, so a changed dataset is rewritten), then read with one
``RandomResizedCropRGBImageDecoder`` per view.

FFCV cannot decode an image once for many views: each view's decoder decodes the JPEG again,
so 8 views cost 8 decodes (the loader benchmark shows the price). Randomness: the epoch order
is FFCV's seeded RANDOM order (reproducible per (seed, epoch)); the crops draw from numba's
global RNG, so views are not keyed per sample. Ranks take disjoint fixed shards of the indices.

Stored size: FFCV sizes every decode buffer for the largest image in the .beton (for each view,
batch and batch in flight), so one 6000x6000 photo makes the loader map tens of GB. Images are
stored with their longer side at most :func:`max_side` of the recipe: the side at which the
smallest crop a view can cut still has a source pixel per output pixel on a square image, so no
view loses resolution (661 px for the SSLight CNN recipe, 692 for the baseline; CIFAR-10's 32 px
images are stored as they are).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch

from loaders.batch import Batch, channels_last_views
from loaders.datasets import data_root
from loaders.images import open_rgb
from loaders.sampler import batches_per_epoch
from loaders.scan import files_key


def _import_ffcv():
    threads = torch.get_num_threads()
    try:
        import ffcv  # noqa: F401  (importing it sets torch to one thread: restore below)
        from ffcv.fields import IntField, RGBImageField
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import RandomHorizontalFlip, ToTensor
        from ffcv.writer import DatasetWriter
    finally:
        torch.set_num_threads(threads)
    return dict(IntField=IntField, RGBImageField=RGBImageField, IntDecoder=IntDecoder,
                RandomResizedCropRGBImageDecoder=RandomResizedCropRGBImageDecoder, Loader=Loader,
                OrderOption=OrderOption, PipelineSpec=PipelineSpec, RandomHorizontalFlip=RandomHorizontalFlip,
                ToTensor=ToTensor, DatasetWriter=DatasetWriter)


def available() -> bool:
    try:
        _import_ffcv()
        return True
    except ImportError:
        return False


class _Images:
    """What FFCV's writer reads: (HWC uint8 image, label, index)."""

    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return np.asarray(open_rgb(self.split.files[i])), self.split.labels[i], i


def max_side(groups) -> int:
    """The longest image side worth storing for views ``groups``: a crop of the smallest scale and
    the narrowest aspect ratio from a square image of this side is as wide as the view."""
    return max(math.ceil(g.size / math.sqrt(g.scale[0] * min(g.ratio[0], 1 / g.ratio[1]))) for g in groups)


def beton_for(split, workers: int, longest_side: int) -> Path:
    """The split's .beton, images at most ``longest_side`` on their longer side, written on first use
    (atomically) and reused while the files are unchanged."""
    ff = _import_ffcv()
    labels = hashlib.sha1(np.asarray(split.labels, np.int64).tobytes()).hexdigest()[:12]
    path = data_root() / "ffcv" / f"{files_key(split.files)}-{labels}-max{longest_side}.beton"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fields = {"image": ff["RGBImageField"](write_mode="jpg", jpeg_quality=95, max_resolution=longest_side),
              "label": ff["IntField"](),
              "index": ff["IntField"]()}
    ff["DatasetWriter"](str(tmp), fields, num_workers=max(1, workers)).from_indexed_dataset(_Images(split))
    tmp.replace(path)
    return path


class FfcvLoader:
    works_in_caller = False  # FFCV's loader runs batches ahead on its own threads
    def __init__(self, split, groups, batch_size, seed, device, workers, rank=0, world=1):
        ff = _import_ffcv()
        self.groups, self.device = groups, device
        self.batches = batches_per_epoch(len(split), batch_size, world)
        per_rank = len(split) // world
        pipelines = {}
        names = []
        for g, group in enumerate(groups):
            for v in range(group.n):
                name = f"g{g}v{v}"
                decoder = ff["RandomResizedCropRGBImageDecoder"]((group.size, group.size), scale=group.scale,
                                                                 ratio=group.ratio)
                pipelines[name] = ff["PipelineSpec"]("image", decoder=decoder, transforms=[
                    ff["RandomHorizontalFlip"](), ff["ToTensor"]()])
                names.append(name)
        pipelines["image"] = None  # only the named views are decoded
        pipelines["label"] = [ff["IntDecoder"](), ff["ToTensor"]()]
        pipelines["index"] = [ff["IntDecoder"](), ff["ToTensor"]()]
        threads = torch.get_num_threads()
        self.loader = ff["Loader"](
            str(beton_for(split, workers, max_side(groups))), batch_size=batch_size, num_workers=max(1, workers),
            order=ff["OrderOption"].RANDOM, seed=seed, indices=np.arange(len(split))[rank::world][:per_rank],
            pipelines=pipelines, drop_last=True,
        )
        torch.set_num_threads(threads)
        self.names = names

    def batches_per_epoch(self) -> int:
        return self.batches

    def epoch(self, epoch: int, skip_batches: int = 0):
        self.loader.next_epoch = epoch
        for b, out in enumerate(self.loader):
            if b < skip_batches:
                continue
            named = dict(zip(self.loader.pipeline_specs.keys(), out))  # outputs follow the spec order
            grouped, start = [], 0
            for g in self.groups:
                views = [named[n] for n in self.names[start:start + g.n]]  # (B, S, S, 3) each
                grouped.append(channels_last_views(torch.stack(views)).to(self.device, non_blocking=True))
                start += g.n
            yield Batch(grouped, named["label"].view(-1).long().to(self.device),
                        named["index"].view(-1).long().to(self.device))
