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
images are stored as they are). The images are scaled here, as FFCV's writer would (OpenCV's
area filter), but never below one pixel a side: FFCV's own resize fails on 0 pixels.

A packed dataset (a ``loaders.shards.ShardedSplit``) is written from its shards' bytes, each
sample read by its byte range, and its .beton keyed on the pack's index: no file is listed.

The writer: FFCV's, watched. A worker that fails (an unreadable file handed to it unscreened) or
dies makes FFCV's writer wait forever for the samples it never writes; here the failure ends the
write with one line naming the file, the other workers are stopped and no .beton is left.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from loaders.batch import Batch, channels_last_views
from loaders.datasets import DataError, data_root
from loaders.images import open_rgb
from loaders.sampler import batches_per_epoch
from loaders.scan import files_key
from loaders.shards import ShardedSplit


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


# what the stored images are: bump when open_rgb's pixels or the stored size change, so .beton
# files written before are not reused (2: 16-bit images scaled, not clipped; sides at least 1 px)
BETON_VERSION = 2


class _Images:
    """What FFCV's writer reads: (HWC uint8 image, label, index), the image at most ``longest_side``
    on its longer side."""

    def __init__(self, split, longest_side: int):
        self.split, self.longest_side = split, longest_side
        self.current = None  # the sample this (worker) process reads, named when it fails

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        import cv2

        self.current = i
        # a packed sample's bytes (screened when it was packed), a folder's file by its path
        sharded = isinstance(self.split, ShardedSplit)
        image = np.asarray(open_rgb(self.split.read(i) if sharded else self.split.files[i]))
        height, width = image.shape[:2]
        ratio = self.longest_side / max(height, width)
        if ratio < 1:  # FFCV's resizer (its size rule, its filter), never below 1 pixel
            size = (max(1, int(ratio * width)), max(1, int(ratio * height)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return image, self.split.labels[i], i

    def name(self, i) -> str:
        if i is None:
            return "a sample"
        return self.split.sample_name(i) if isinstance(self.split, ShardedSplit) else self.split.files[i]


def _write_samples(*args):
    """FFCV's writer worker, which on a failure writes one line into the error file (its last
    argument) and exits at once: unwinding would wait for pages the other workers write."""
    from ffcv.writer import worker_job_indexed_dataset

    *args, error_file = args
    dataset = args[-1]
    try:
        worker_job_indexed_dataset(*args)
    except BaseException as exc:  # noqa: BLE001  (anything, even a KeyboardInterrupt: reported, then exit)
        message = " ".join(str(exc).split()) or type(exc).__name__
        Path(error_file).write_text(f"{dataset.name(dataset.current)}: {type(exc).__name__}: {message}")
        os._exit(1)


def _write_beton(path: Path, fields: dict, images: _Images, workers: int) -> None:
    """FFCV's ``DatasetWriter.from_indexed_dataset`` with its workers watched (its
    ``_write_common``, which waits on a count of written samples that a failed worker never
    raises): a worker's failure or death raises :class:`DataError` with one line."""
    from multiprocessing import Process, Queue, Value
    import ctypes

    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.utils import chunks
    from ffcv.writer import DatasetWriter

    writer = DatasetWriter(str(path), fields, num_workers=workers)
    writer.num_samples = len(images)
    writer.prepare()
    error_file = path.with_name(path.name + ".error")
    todo, allocations, done = Queue(), Queue(), Value(ctypes.c_uint64, 0)
    for chunk in chunks(list(enumerate(range(len(images)))), 100):
        todo.put(chunk)
    for _ in range(workers):
        todo.put(None)
    allocator = MemoryAllocator(str(path), writer.data_region_start, writer.page_size)
    args = (todo, writer.metadata_sm, writer.metadata_type, fields, allocator, done, allocations, images,
            str(error_file))
    processes = [Process(target=_write_samples, args=args) for _ in range(workers)]
    for p in processes:
        p.start()

    def failed() -> str | None:
        if error_file.exists():
            return error_file.read_text()
        dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
        return f"a writer process died (exit code {dead[0]})" if dead else None

    console = Console(stderr=True)
    print(f"writing {len(images)} images into an FFCV .beton in {path.parent} (once; reused while the files "
          "are unchanged)", file=sys.stderr, flush=True)
    try:
        with Progress(*Progress.get_default_columns(), console=console, transient=True,
                      disable=not console.is_terminal) as progress:
            bar = progress.add_task("writing the .beton", total=len(images))
            allocation_list, waiting = [], len(processes)
            while waiting:  # each worker sends its allocations when all its samples are written
                if (reason := failed()) is not None:
                    raise DataError(f"FFCV's .beton writer stopped: {reason}")
                progress.update(bar, completed=done.value)
                try:
                    allocation_list.extend(allocations.get(timeout=0.1))
                    waiting -= 1
                except queue.Empty:
                    continue
        writer.finalize(allocation_list)
    finally:
        for p in processes:
            if p.is_alive():
                p.terminate()
            p.join()
        writer.metadata_sm.close()
        writer.metadata_sm.unlink()
        error_file.unlink(missing_ok=True)


def max_side(groups) -> int:
    """The longest image side worth storing for views ``groups``: a crop of the smallest scale and
    the narrowest aspect ratio from a square image of this side is as wide as the view."""
    return max(math.ceil(g.size / math.sqrt(g.scale[0] * min(g.ratio[0], 1 / g.ratio[1]))) for g in groups)


def beton_for(split, workers: int, longest_side: int) -> Path:
    """The split's .beton, images at most ``longest_side`` on their longer side, written on first use
    (atomically) and reused while the files are unchanged. ``split``: a folder's ``Split`` (its
    files opened by path) or a packed ``ShardedSplit`` (each sample's bytes read from its shard)."""
    ff = _import_ffcv()
    labels = hashlib.sha1(np.asarray(split.labels, np.int64).tobytes()).hexdigest()[:12]
    # a packed split is known by its key (its index's digest, split, size): nothing is listed or stat-ed
    source = hashlib.sha1(split.key.encode()).hexdigest() if isinstance(split, ShardedSplit) else files_key(split.files)
    path = data_root() / "ffcv" / f"{source}-{labels}-max{longest_side}-v{BETON_VERSION}.beton"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fields = {"image": ff["RGBImageField"](write_mode="jpg", jpeg_quality=95, max_resolution=longest_side),
              "label": ff["IntField"](),
              "index": ff["IntField"]()}
    try:
        _write_beton(tmp, fields, _Images(split, longest_side), max(1, workers))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
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
