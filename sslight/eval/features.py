"""Frozen backbone features: extracted from centre crops, and cached beside the checkpoint.

A cache file is named by a digest of everything its content depends on: the checkpoint's bytes,
the split's files and labels, the image size, the flip, and the forward precision. Another
checkpoint or dataset gives another name, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import multiprocessing.forkserver
import signal
import threading
from pathlib import Path

import torch
from PIL import Image

from loaders.errors import DataError
from loaders.images import open_rgb, to_uint8_chw
from sslight.augment import IMAGENET_MEAN, IMAGENET_STD
from sslight.checkpoint import save_atomic
from sslight.interrupt import stop_point
from sslight.precision import autocast

RESIZE_RATIO = 256 / 224  # resize then centre-crop, the usual evaluation geometry


class EvalImages(torch.utils.data.Dataset):
    """Centre crops (optionally mirrored) as uint8 CHW tensors, with their labels."""

    def __init__(self, split, size: int, flip: bool = False):
        self.split, self.size, self.flip = split, size, flip

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list:
        """A batch's samples (the DataLoader asks for a batch at once), read together: a packed
        split reads a run of consecutive samples in one go (``read_many``). None stands for a
        sample of a packed shard that stays unreadable over the network (said once, by the split)."""
        return [None if data is None else (self.centre_crop(data), self.split.labels[i])
                for i, data in zip(indices, self.split.read_many(indices))]

    def centre_crop(self, data: bytes) -> torch.Tensor:
        image = open_rgb(io.BytesIO(data))
        if image.size != (self.size, self.size):
            short = round(self.size * RESIZE_RATIO)
            scale = short / min(image.size)
            image = image.resize((max(short, round(image.width * scale)), max(short, round(image.height * scale))),
                                 Image.BICUBIC)
            left, top = (image.width - self.size) // 2, (image.height - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        if self.flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_uint8_chw(image)

    def collate(self, samples):
        """The batch of the samples read: one of an unreadable shard is left out."""
        kept = [s for s in samples if s is not None]
        if not kept:
            return torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
        return torch.utils.data.default_collate(kept)


def image_loader(dataset, batch_size: int, workers: int, **options) -> torch.utils.data.DataLoader:
    """A DataLoader for evaluation images whose workers do not fork from the process that evaluates:
    during training it holds the trainer and its loader's buffers (FFCV's can map tens of GB), and a
    fork of it can fail for lack of memory. They fork from a server process that imported this
    module once (3 s the first time, then as quick as a fork: measured 0.3 s for 2 workers, against
    7-11 s for spawned ones)."""
    context = None
    if workers:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        start_forkserver()
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                       multiprocessing_context=context, **options)


def start_forkserver() -> None:
    """Starts the forkserver (and multiprocessing's resource tracker) with SIGINT ignored, as it
    would set it itself only after importing this module: a Ctrl-C in those seconds would print
    its KeyboardInterrupt traceback beside the command's one-line stop. The workers it forks keep
    ignoring SIGINT; they end when the command, which stops on it, shuts its loader down or exits."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal works there only
        multiprocessing.forkserver.ensure_running()
        return
    # An ignored signal stays ignored across exec. This process ignores SIGINT only for the fork and
    # exec (milliseconds): blocking it instead would not reach the server (its mask is reset).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def normalised(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> ImageNet-normalised float32 on ``device``, channels-last."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return ((images.to(device).float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def extract(backbone, split, size: int, device, dtype, workers: int, batch: int = 256, flip: bool = False):
    """Backbone features (N, D) in float32 and labels (N,) for every image of ``split`` (but those of
    a packed shard that stayed unreadable over the network, left out with a warning).

    Eager, also where training compiled the backbone (``nn.Module.compile``, in place): eval mode,
    no_grad and other batch sizes would each compile it again, counting towards dynamo's recompile
    limit, past which dynamo runs it eager."""
    images = EvalImages(split, size, flip)
    loader = image_loader(images, batch, workers, collate_fn=images.collate)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    with torch.compiler.set_stance("force_eager"):
        for pixels, y in loader:
            stop_point()
            if not len(y):
                continue
            with autocast(device, dtype):
                feats.append(backbone(normalised(pixels, device)).float())
            labels.append(y.to(device))
    backbone.train(was_training)
    if not feats:
        raise DataError(f"none of the {len(split)} images of the evaluation split could be read")
    return torch.cat(feats), torch.cat(labels)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_digest(split) -> str:
    h = hashlib.sha256()
    for f, label in zip(split.files, split.labels):
        h.update(f"{f}\t{label}\n".encode())
    return h.hexdigest()


class FeatureCache:
    def __init__(self, ckpt: Path, backbone, size: int, device, dtype, workers: int):
        self.folder = ckpt.parent / "features"
        self.stem, self.ckpt_digest = ckpt.stem, file_digest(ckpt)
        self.backbone, self.size, self.device, self.dtype, self.workers = backbone, size, device, dtype, workers

    def path(self, split, flip: bool) -> Path:
        key = "|".join([self.ckpt_digest, split_digest(split), str(self.size), str(flip), str(self.dtype)])
        return self.folder / f"{self.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"

    def get(self, split, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D) float32, labels (N,)) on the device, from the cache when it has them."""
        path = self.path(split, flip)
        if path.exists():
            saved = torch.load(path, map_location=self.device)
            return saved["features"].float(), saved["labels"]
        feats, labels = extract(self.backbone, split, self.size, self.device, self.dtype, self.workers, flip=flip)
        if len(labels) < len(split):  # samples of an unreadable shard left out: not for keeps
            return feats, labels
        self.folder.mkdir(exist_ok=True)
        # stored in the forward's precision: bf16 outputs lose nothing, fp32 ones stay exact
        save_atomic(dict(features=feats.to(self.dtype).cpu(), labels=labels.cpu()), path)
        return feats, labels
