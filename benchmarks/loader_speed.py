"""Loader throughput, side by side in one run: images/s with all views cut (geometry), and with
views ready for the model (geometry + sslight.augment), against two references measured in the
same run: the decode-only bound and the original SSLight data path.

Usage: python -m benchmarks.loader_speed --data DIR [--backends pil nvjpeg dali ffcv] [--recipe sslight_cnn]
       [--batches 20] [--main-threads N] [--csv out.csv]

The main process, where "views ready" runs the photometric kernel while the workers cut the
next batches, gets the cores the workers leave (``--main-threads``, default cores - workers, at
least 1): on 2 cores with 2 workers, a second kernel thread only fights the workers for a core
and waits at the kernel's barrier (about 20% fewer images/s measured side by side).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time

import torch
from PIL import ImageFilter, ImageOps
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from loaders import build_loader
from loaders.batch import ViewGroup
from loaders.datasets import discover
from loaders.images import open_rgb
from loaders.registry import missing
from sslight.augment import IMAGENET_MEAN, IMAGENET_STD, Photometric
from sslight.methods import METHODS
from sslight.recipes import Machine
from sslight.table import Table

RECIPES = {
    "baseline_cnn": [ViewGroup(2, 224, (0.14, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 96, (0.05, 0.14), (3 / 4, 4 / 3))],
    "sslight_cnn": [ViewGroup(2, 224, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 128, (0.05, 0.3), (3 / 4, 4 / 3))],
    "sslight_vit": [ViewGroup(2, 224, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(10, 128, (0.05, 0.3), (3 / 4, 4 / 3))],
    # the SSLight CNN recipe at CIFAR-10's size, as training resolves it: 32 px globals, 18 px locals
    "sslight_cifar": [ViewGroup(2, 32, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 18, (0.05, 0.3), (3 / 4, 4 / 3))],
}
IMAGENET_RECIPES = ("baseline_cnn", "sslight_cnn", "sslight_vit")


class _DecodeOnly(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            image = decode_jpeg(read_file(self.files[i]), mode=ImageReadMode.RGB)
        except RuntimeError:  # a rare non-JPEG or CMYK file: PIL, as any loader would
            image = T.functional.pil_to_tensor(open_rgb(self.files[i]))
        return torch.tensor(image.shape)  # the bound excludes shipping pixels between processes


class _Blur:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if random.random() < self.p:
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        return img


class _Solarize:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img, 128) if random.random() < self.p else img


def original_photometric(groups):
    """The original SSLight/DINO per-view photometric ops, in view order, on a PIL crop."""
    def view(blur, solarize):
        return T.Compose([
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            _Blur(blur), _Solarize(solarize),
            T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
    g, loc = groups
    return [view(1.0, 0.0), view(0.1, 0.2)] + [view(0.5, 0.0)] * loc.n


def original_transforms(groups):
    """The original SSLight/DINO data path: every view cut and augmented with PIL in workers."""
    sizes = [groups[0]] * groups[0].n + [groups[1]] * groups[1].n
    return [T.Compose([T.RandomResizedCrop(g.size, scale=g.scale, interpolation=T.InterpolationMode.BICUBIC),
                       T.RandomHorizontalFlip(), photometric])
            for g, photometric in zip(sizes, original_photometric(groups))]


class _Original(torch.utils.data.Dataset):
    def __init__(self, files, groups):
        self.files, self.views = files, original_transforms(groups)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        image = open_rgb(self.files[i])
        return [t(image) for t in self.views]


def default_main_threads(workers: int) -> int:
    """The cores the workers leave, at least one (see the module docstring)."""
    return max(1, (os.cpu_count() or 1) - workers)


def warmup_batches(workers: int) -> int:
    return 2 + 4 * workers  # drains the deepest prefetch queue here (4 batches per worker)


def views_ready(groups, device: torch.device):
    """The "views ready" step: ``sslight.augment`` (DINO settings) on every group of a batch."""
    photometric = Photometric(METHODS["dino"].photometry(groups[0].n, groups[1].n), groups[0].size, device,
                              torch.float32)
    generator = torch.Generator(device=device).manual_seed(0)
    return lambda batch: photometric.batch(batch.views, generator)


def synchronize() -> None:
    """Waits for the GPU's queued work (GPU loaders and the photometric step return before their
    kernels finish), so that a clock started or read after it counts that work where it belongs."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rate(stream, batches: int, batch_size: int, warmup: int, transform=None) -> float:
    """Images/s over ``batches`` batches of ``stream`` after ``warmup`` batches (enough to drain what
    the loader prefetched while it waited, which would otherwise come for free)."""
    for _ in range(warmup):
        next(stream)
    synchronize()  # the warm-up's kernels are not the measured batches' work
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
        if transform:
            transform(batch)
    synchronize()
    return batches * batch_size / (time.perf_counter() - start)


def images_per_stream(batch_size: int, batches: int, workers: int) -> int:
    """The images one stream of :func:`main` reads: its warm-up, then ``batches`` for each of its
    (at most two) rows; an epoch of at least this many keeps every measured batch inside it."""
    return batch_size * (warmup_batches(workers) + 2 * batches)


def cycle_epochs(epoch_batches, what: str):
    """The batches of epoch 0, 1, 2, ... of ``epoch_batches(epoch)``, without end; an epoch that
    yields none (fewer images than one batch) raises, where it would otherwise loop for ever."""
    epoch = 0
    while True:
        empty = True
        for batch in epoch_batches(epoch):
            empty = False
            yield batch
        if empty:
            raise ValueError(f"{what}: epoch {epoch} yielded no batch; allowed: a batch size of at most the "
                             "images (per process)")
        epoch += 1


def main(argv: list[str] | None = None) -> Table:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--backends", nargs="+", default=["pil", "nvjpeg", "dali", "ffcv"])
    p.add_argument("--recipe", default="sslight_cnn", choices=sorted(RECIPES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="every pipeline is measured once per round")
    p.add_argument("--workers", type=int, default=Machine.here().workers,
                   help="default: what make train takes here (data.workers=auto)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--main-threads", type=int, default=0, help="0 = cores - workers, at least 1")
    p.add_argument("--csv", default="")
    args = p.parse_args(argv)
    if args.main_threads < 0:
        p.error(f"--main-threads {args.main_threads}: allowed: 0 (cores - workers) or a positive count")
    main_threads = args.main_threads or default_main_threads(args.workers)
    split = discover(args.data).train
    groups = RECIPES[args.recipe]
    device = torch.device(args.device)
    n_views = sum(g.n for g in groups)
    warmup = warmup_batches(args.workers)

    def dl(ds, collate=None):
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                             drop_last=True, persistent_workers=args.workers > 0,
                                             collate_fn=collate)
        return cycle_epochs(lambda epoch: loader, f"--batch {args.batch} with {len(split)} images")

    augment = views_ready(groups, device)

    # (stream factory, [(pipeline, output, transform)]): a backend's two rows share one stream
    pipelines = [(lambda: dl(_DecodeOnly(split.files)), [("decode only (torchvision decode_jpeg)", "reference",
                                                          None)]),
                 (lambda: dl(_Original(split.files, groups)),
                  [("original SSLight data path (PIL, per view)", "views ready", None)])]
    for backend in args.backends:
        if missing(backend):
            print(f"skipping {backend}: not installed here")
            continue
        pipelines.append((lambda b=backend: cycle_epochs(build_loader(b, split, groups, args.batch, 0, device,
                                                                      args.workers).epoch,
                                                         f"{b}, --batch {args.batch} with {len(split)} images"),
                          [(backend, "geometry", None), (backend, "views ready", augment)]))

    def measure(make_stream, rows):
        # one pipeline at a time, its workers gone before the next starts: a live loader keeps
        # refilling its prefetch queue and would steal the cores from the one being measured
        stream = make_stream()
        try:  # warm-up once per stream: its second row follows the first in the loader's steady state
            return [rate(stream, args.batches, args.batch, warmup if i == 0 else 0, transform)
                    for i, (_, _, transform) in enumerate(rows)]
        finally:
            stream.close()
            gc.collect()

    # one row per round; ratios are taken within a round, where the machine's mood is shared
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(main_threads)
    try:
        rounds = torch.tensor([[r for make, rows in pipelines for r in measure(make, rows)]
                               for _ in range(args.rounds)])
    finally:  # the suite runs other benchmarks in this process next
        torch.set_num_threads(previous_threads)
    median = lambda t: t.median(0).values.tolist()  # noqa: E731
    ips, x_original, share = median(rounds), median(rounds / rounds[:, 1:2]), median(rounds / rounds[:, 0:1])
    names = [row[:2] for _, rows in pipelines for row in rows]

    table = Table(f"loaders, {args.recipe}: {groups[0].n}x{groups[0].size} + {groups[1].n}x{groups[1].size}, "
                  f"batch {args.batch}, {args.workers} workers, {main_threads} main thread(s), {device.type}, "
                  f"{len(split)} images in {args.data}; "
                  f"medians of {args.rounds} rounds of {args.batches} batches",
                  ["pipeline", "output", "images/s", "views/s", "x original", "share of decode-only"])
    for (name, what), r, x, d in zip(names, ips, x_original, share):
        table.add(name, what, r, r * n_views, x, f"{100 * d:.0f}%")
    return table.emit(args.csv)


if __name__ == "__main__":
    main()
