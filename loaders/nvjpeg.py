"""nvjpeg backend: workers only read file bytes; the training device decodes the batch
(nvJPEG through torchvision's ``decode_jpeg`` on CUDA; libjpeg-turbo through simplejpeg on the
CPU, about 10% faster than torchvision's CPU decode in one process, the same pixels within one
level) and the multi-crop kernel cuts every view. Non-JPEG files (PNG, ...) and JPEGs the
batched decoder rejects (CMYK on nvJPEG) take a CPU fallback decode.

When the training device is the CPU, its cores are the worker processes: each worker decodes
and cuts its whole batch (the same functions, the same views), so geometry runs beside the
main process's augmentation and training step instead of before it."""

from __future__ import annotations

import simplejpeg
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

from loaders.batch import Batch
from loaders.crop import batch_bytes, map_threads, multi_crop, views_in
from loaders.geometry import view_params
from loaders.images import open_rgb, to_uint8_chw
from loaders.sampler import EpochBatchSampler
from loaders.shared_buffers import SharedBatchBuffers

JPEG_MAGIC = b"\xff\xd8"


class FileBytes(torch.utils.data.Dataset):
    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        epoch, index = key
        return read_file(self.split.files[index]), self.split.labels[index], index, epoch


def collate_bytes(samples):
    """One packed byte buffer per batch: a single shared-memory block crosses from the worker,
    not one per file (which exhausts file descriptors)."""
    data, labels, indices, epochs = zip(*samples)
    lengths = torch.tensor([len(d) for d in data])
    return torch.cat(data), lengths, torch.tensor(labels), torch.tensor(indices), epochs[0]


class DecodeAndCut:
    """Decodes a packed batch on ``device`` and cuts every view, one (n, B, 3, S, S) tensor per
    group, keyed on (seed, epoch, index). On the CPU it is the workers' collate function, and
    writes each batch into one of ``buffers`` (which only the CPU path needs)."""

    def __init__(self, split, groups, seed, device, buffers: SharedBatchBuffers | None = None):
        self.split, self.groups, self.seed, self.device, self.buffers = split, groups, seed, device, buffers

    def views(self, packed, lengths, indices: torch.Tensor, epoch: int,
              storage: torch.UntypedStorage | None = None) -> list[torch.Tensor]:
        """The views, written into ``storage`` (CPU) when given."""
        index_list = indices.tolist()
        images = decode_batch(list(torch.split(packed, lengths.tolist())),
                              [self.split.files[i] for i in index_list], self.device)
        params = [view_params(self.seed, epoch, i, im.shape[2], im.shape[1], self.groups)
                  for im, i in zip(images, index_list)]
        outs = views_in(storage, self.groups, len(images)) if storage is not None else [None] * len(self.groups)
        return [multi_crop(images, [p[g] for p in params], group.size, out)
                for g, (group, out) in enumerate(zip(self.groups, outs))]

    def __call__(self, samples):
        packed, lengths, labels, indices, epoch = collate_bytes(samples)
        slot, storage = self.buffers.take(batch_bytes(self.groups, len(samples)))
        return self.views(packed, lengths, indices, epoch, storage), labels, indices, slot


def rgb(image: torch.Tensor) -> torch.Tensor:
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]


def decode_fallback(data: torch.Tensor, path: str) -> torch.Tensor:
    """CPU decode of anything torchvision reads (PNG, CMYK JPEG...), PIL as the last resort."""
    try:
        return rgb(decode_image(data, mode=ImageReadMode.RGB))
    except RuntimeError:
        return to_uint8_chw(open_rgb(path))


def is_jpeg(data: torch.Tensor) -> bool:
    return bytes(data[:2].tolist()) == JPEG_MAGIC


def decode_jpeg_cpu(data: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8, a channels-last view of libjpeg-turbo's HWC output (as torchvision's is)."""
    return torch.from_numpy(simplejpeg.decode_jpeg(data.numpy(), colorspace="RGB")).permute(2, 0, 1)


def decode_batch(data: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    """Decoded (3, H, W) uint8 images on ``device``, in order."""
    jpeg = [i for i, d in enumerate(data) if is_jpeg(d)]
    images: list[torch.Tensor | None] = [None] * len(data)
    if device.type == "cuda" and jpeg:
        try:
            decoded = decode_jpeg([data[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
            for i, im in zip(jpeg, decoded):
                images[i] = rgb(im)
        except RuntimeError:  # one file nvJPEG cannot take fails the whole call: go one by one
            pass
    pending = [i for i, im in enumerate(images) if im is None]
    jpeg_set = set(jpeg)

    def decode_one(i):
        try:
            return decode_jpeg_cpu(data[i]) if i in jpeg_set else None
        except ValueError:
            return None

    for i, im in zip(pending, map_threads(decode_one, pending)):
        images[i] = (im if im is not None else decode_fallback(data[i], paths[i])).to(device, non_blocking=True)
    return images


class NvjpegLoader:
    def __init__(self, split, groups, batch_size, seed, device, workers, rank=0, world=1,
                 decode_in_workers: bool | None = None):
        """``decode_in_workers``: whether the DataLoader workers decode and cut (by default on a
        CPU device) or the process that trains does, from the bytes the workers read (by default
        on CUDA, where the GPU decodes; on a CPU device this path is what tests drive)."""
        self.device = device
        self.sampler = EpochBatchSampler(len(split), batch_size, seed, rank, world)
        self.in_workers = device.type == "cpu" if decode_in_workers is None else decode_in_workers
        if self.in_workers and device.type != "cpu":
            raise ValueError(f"device {device}: only a CPU device decodes in the DataLoader workers")
        prefetch = 2 if self.in_workers else 4
        # a worker's buffers: its prefetched batches, the one it cuts, and two the consumer holds
        self.buffers = SharedBatchBuffers(workers, per_worker=prefetch + 3) if self.in_workers else None
        self.decode_and_cut = DecodeAndCut(split, groups, seed, device, self.buffers)
        self.loader = torch.utils.data.DataLoader(
            FileBytes(split), batch_sampler=self.sampler, num_workers=workers,
            collate_fn=self.decode_and_cut if self.in_workers else collate_bytes,
            pin_memory=device.type == "cuda",  # bytes, labels and indices copy to the GPU asynchronously
            persistent_workers=workers > 0, prefetch_factor=prefetch if workers else None,
        )

    @property
    def works_in_caller(self) -> bool:
        """Whether each batch is decoded and cut in the thread that asks for it."""
        return not self.in_workers

    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch()

    def epoch(self, epoch: int, skip_batches: int = 0):
        self.sampler.set_epoch(epoch, skip_batches)
        if self.in_workers:
            for views, labels, indices, slot in self.loader:
                self.buffers.received(slot, views[0])
                yield Batch(views, labels, indices)
            return
        nb = self.device.type == "cuda"
        for packed, lengths, labels, indices, ep in self.loader:
            views = self.decode_and_cut.views(packed, lengths, indices, ep)
            yield Batch(views, labels.to(self.device, non_blocking=nb), indices.to(self.device, non_blocking=nb))
