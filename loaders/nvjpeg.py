"""nvjpeg backend: the DataLoader workers read each file's bytes, its size from its header and
its views' crop boxes (keyed on (seed, epoch, index)), all of a batch shipped as a few tensors;
the training device decodes the batch (nvJPEG through torchvision's batched ``decode_jpeg`` on
CUDA; libjpeg-turbo through simplejpeg on the CPU, about 10% faster than torchvision's CPU
decode in one process, the same pixels within one level) and the multi-crop kernel cuts every
view. Non-JPEG files (PNG, ...) and JPEGs the batched decoder rejects (CMYK on nvJPEG) take a
CPU fallback decode, each alone: the rest of the batch is still decoded on the GPU. Out of
memory and CUDA errors are raised, never taken for a bad file.

When the training device is the CPU, its cores are the worker processes: each worker decodes
and cuts its whole batch (the same functions, the same views), so geometry runs beside the
main process's augmentation and training step instead of before it."""

from __future__ import annotations

import re
from functools import partial
from typing import NamedTuple

import simplejpeg
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from loaders.batch import Batch
from loaders.crop import batch_bytes, map_threads, multi_crop, views_in
from loaders.datasets import DataError
from loaders.geometry import view_boxes
from loaders.images import JPEG_MAGIC, image_size, open_rgb, to_uint8_chw
from loaders.source import epoch_source
from loaders.shared_buffers import SharedBatchBuffers

# what a failed decode says when the device (or the install) failed, not the file: torchvision
# re-raises whatever its CUDA decode threw as a plain RuntimeError carrying the message, so the
# type alone is lost
DEVICE_FAILURES = ("out of memory", "CUDA error", "cudaError", "device-side assert", "illegal memory access",
                   "Failed to synchronize CUDA stream", "not compiled with nvJPEG", "Failed to initialize nvjpeg",
                   "Failed to create")
# nvJPEG's own failures come as "Failed to <step>: <nvjpegStatus_t>"; these statuses are the
# device's, not the file's: NOT_INITIALIZED 1, ALLOCATOR_FAILURE 5 (nvJPEG allocates its buffers
# with cudaMalloc, outside torch's cache, so a full GPU fails here first), EXECUTION_FAILED 6,
# ARCH_MISMATCH 7, INTERNAL_ERROR 8. A bad file gives BAD_JPEG 3, JPEG_NOT_SUPPORTED 4 or
# INCOMPLETE_BITSTREAM 10.
NVJPEG_STATUS = re.compile(r"Failed to [^:\n]*: (\d+)\b")
NVJPEG_DEVICE_STATUSES = {1, 5, 6, 7, 8}


class EncodedBatch(NamedTuple):
    """A batch as the workers hand it over. A named tuple: the DataLoader pins each tensor."""

    packed: torch.Tensor  # every file's bytes in one buffer: one shared-memory block crosses from
    # the worker, not one per file (which exhausts file descriptors)
    lengths: torch.Tensor  # (B,) bytes per file
    sizes: torch.Tensor  # (B, 2) each image's (height, width), from its header
    boxes: torch.Tensor  # (B, views of all groups, 5) int64: (top, left, h, w, flip)
    labels: torch.Tensor
    indices: torch.Tensor
    epoch: int


class FileBytes(torch.utils.data.Dataset):
    """A file's bytes, its image size and its views' boxes: all the per-sample work that is not
    decoding happens in the workers, none of it in the process that trains."""

    def __init__(self, split, groups, seed: int, reader):
        self.split, self.groups, self.seed, self.reader = split, groups, seed, reader

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        epoch, index = key
        data = torch.frombuffer(bytearray(self.reader.read(epoch, index)), dtype=torch.uint8)
        try:
            width, height = image_size(data.numpy())
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.split.sample_name(index)}: no image size in its header ({exc})") from None
        boxes = view_boxes(self.seed, epoch, index, width, height, self.groups)
        return data, (height, width), boxes, self.split.labels[index], index, epoch


def collate_bytes(samples) -> EncodedBatch:
    data, sizes, boxes, labels, indices, epochs = zip(*samples)
    return EncodedBatch(torch.cat(data), torch.tensor([len(d) for d in data]), torch.tensor(sizes),
                        torch.stack(boxes), torch.tensor(labels), torch.tensor(indices), epochs[0])


class DecodeAndCut:
    """Decodes an :class:`EncodedBatch` on ``device`` and cuts every view, one (n, B, 3, S, S)
    tensor per group. On the CPU it is the workers' collate function, and writes each batch into
    one of ``buffers`` (which only the CPU path needs)."""

    def __init__(self, split, groups, device, buffers: SharedBatchBuffers | None = None):
        self.split, self.groups, self.device, self.buffers = split, groups, device, buffers
        self.batched_decode = partial(decode_jpegs_gpu, device=device) if device.type == "cuda" else None

    def views(self, batch: EncodedBatch, storage: torch.UntypedStorage | None = None) -> list[torch.Tensor]:
        """The views, written into ``storage`` (CPU) when given."""
        paths = [self.split.sample_name(i) for i in batch.indices.tolist()]
        images = decode_batch(list(torch.split(batch.packed, batch.lengths.tolist())), paths, self.device,
                              self.batched_decode)
        # the boxes were drawn for the header's size: a decode of another size would cut wrong
        # views on the CPU and read outside the image in the Triton kernel
        for path, image, (height, width) in zip(paths, images, batch.sizes.tolist()):
            if tuple(image.shape[1:]) != (height, width):
                raise DataError(f"{path}: decoded to {image.shape[1]}x{image.shape[2]} pixels, its header says "
                                f"{height}x{width}")
        outs = views_in(storage, self.groups, len(images)) if storage is not None else [None] * len(self.groups)
        views, start = [], 0
        for group, out in zip(self.groups, outs):
            views.append(multi_crop(images, batch.boxes[:, start:start + group.n], group.size, out))
            start += group.n
        return views

    def __call__(self, samples):
        batch = collate_bytes(samples)
        slot, storage = self.buffers.take(batch_bytes(self.groups, len(samples)))
        return self.views(batch, storage), batch.labels, batch.indices, slot


def rgb(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 from a decoder's output: grey expanded, alpha dropped, 16-bit samples (a
    16-bit PNG decodes to uint16) scaled by their high byte, as :func:`loaders.images.open_rgb` does."""
    if image.dtype == torch.uint16:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)  # torch has no shift for uint16
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]


def decode_fallback(data: torch.Tensor, path: str) -> torch.Tensor:
    """CPU decode of anything torchvision reads (PNG, CMYK JPEG...), PIL as the last resort: from
    the bytes (``path`` names the file for messages), so packed samples decode the same."""
    try:
        return rgb(decode_image(data, mode=ImageReadMode.RGB))
    except RuntimeError:
        return to_uint8_chw(open_rgb(data.numpy().tobytes()))


def is_jpeg(data: torch.Tensor) -> bool:
    return data[:2].numpy().tobytes() == JPEG_MAGIC


def decode_jpeg_cpu(data: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8, a channels-last view of libjpeg-turbo's HWC output (as torchvision's is)."""
    return torch.from_numpy(simplejpeg.decode_jpeg(data.numpy(), colorspace="RGB")).permute(2, 0, 1)


def decode_jpegs_gpu(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """nvJPEG, through torchvision's batched CUDA decode. It allocates its outputs on the current
    stream but decodes on a stream of its own that does not wait for the current one, so its
    outputs could land in memory that kernels queued on the current stream still read (the
    previous step's, or in the prefetch thread the previous batch's crop kernel): the current
    stream is drained first. In the prefetch thread that is the thread's own stream: only the
    producer waits."""
    torch.cuda.current_stream(device).synchronize()
    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def is_device_failure(exc: RuntimeError) -> bool:
    """Whether a failed decode is the device's doing (out of memory, an asynchronous CUDA error)
    or the install's (a torchvision without nvJPEG) rather than a file's."""
    message = str(exc)
    return (isinstance(exc, torch.OutOfMemoryError) or any(s in message for s in DEVICE_FAILURES)
            or any(int(status) in NVJPEG_DEVICE_STATUSES for status in NVJPEG_STATUS.findall(message)))


def decode_or_isolate(data: list[torch.Tensor], batched_decode) -> list[torch.Tensor | None]:
    """``batched_decode(data)``, with None for each file it rejects. One bad file fails the whole
    call: the batch is halved until each bad file is alone, so the good ones are still decoded in
    batches (about 2 log2(B) more calls per bad file). Device failures are raised."""
    try:
        return list(batched_decode(data))
    except RuntimeError as exc:
        if is_device_failure(exc):
            raise
        if len(data) == 1:
            return [None]
    half = len(data) // 2
    return decode_or_isolate(data[:half], batched_decode) + decode_or_isolate(data[half:], batched_decode)


def decode_batch(data: list[torch.Tensor], paths: list[str], device: torch.device,
                 batched_decode=None) -> list[torch.Tensor]:
    """Decoded (3, H, W) uint8 images on ``device``, in order. ``batched_decode`` (nvJPEG on CUDA:
    :func:`decode_jpegs_gpu`) takes the JPEGs in one call; what it rejects, and every file when
    there is none, is decoded on the CPU (libjpeg-turbo, else :func:`decode_fallback`)."""
    images: list[torch.Tensor | None] = [None] * len(data)
    jpeg = [is_jpeg(d) for d in data]
    if batched_decode is not None and any(jpeg):
        chosen = [i for i, j in enumerate(jpeg) if j]
        for i, im in zip(chosen, decode_or_isolate([data[i] for i in chosen], batched_decode)):
            images[i] = None if im is None else rgb(im)
    pending = [i for i, im in enumerate(images) if im is None]

    def decode_one(i):
        try:
            return decode_jpeg_cpu(data[i]) if jpeg[i] else None
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
        self.sampler, reader = epoch_source(split, batch_size, seed, rank, world, workers)
        self.in_workers = device.type == "cpu" if decode_in_workers is None else decode_in_workers
        if self.in_workers and device.type != "cpu":
            raise ValueError(f"device {device}: only a CPU device decodes in the DataLoader workers")
        prefetch = 2 if self.in_workers else 4
        # a worker's buffers: its prefetched batches, the one it cuts, and two the consumer holds
        self.buffers = SharedBatchBuffers(workers, per_worker=prefetch + 3) if self.in_workers else None
        self.decode_and_cut = DecodeAndCut(split, groups, device, self.buffers)
        self.loader = torch.utils.data.DataLoader(
            FileBytes(split, groups, seed, reader), batch_sampler=self.sampler, num_workers=workers,
            collate_fn=self.decode_and_cut if self.in_workers else collate_bytes,
            pin_memory=device.type == "cuda",  # labels and indices copy to the GPU asynchronously
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
        for batch in self.loader:
            views = self.decode_and_cut.views(batch)
            yield Batch(views, batch.labels.to(self.device, non_blocking=nb),
                        batch.indices.to(self.device, non_blocking=nb))
