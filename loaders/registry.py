"""Loader backends by name."""

from __future__ import annotations

from loaders import dali, ffcv
from loaders.batch import Loader
from loaders.dali import DaliLoader
from loaders.ffcv import FfcvLoader
from loaders.nvjpeg import NvjpegLoader
from loaders.pil import PilLoader
from loaders.prefetch import Prefetched
from loaders.synthetic import SyntheticLoader

BACKENDS = {"pil": PilLoader, "nvjpeg": NvjpegLoader, "dali": DaliLoader, "ffcv": FfcvLoader, "synthetic": SyntheticLoader}


def build_loader(name: str, split, groups, batch_size: int, seed: int, device, workers: int,
                 rank: int = 0, world: int = 1, overlap: bool = False) -> Loader:
    """Backend ``name``; with ``overlap``, a backend that makes its batches in the thread that asks
    for them (nvjpeg on CUDA) makes the next one in a thread of its own meanwhile."""
    loader = BACKENDS[name](split, groups, batch_size, seed, device, workers, rank, world)
    if overlap and loader.works_in_caller:
        return Prefetched(loader, device)
    return loader


# optional backends: (is it importable, how to install it)
OPTIONAL = {"dali": (dali.available, "pip install -e '.[dali]'"),
            "ffcv": (ffcv.available, "apt-get install libturbojpeg0-dev libopencv-dev pkg-config, "
                                     "then pip install -e '.[ffcv]'")}


def missing(name: str) -> str | None:
    """How to install backend ``name`` when it is not importable here; None when it is."""
    is_available, hint = OPTIONAL.get(name, (lambda: True, ""))
    return None if is_available() else hint


SMALL_IMAGES = 64  # px: CIFAR-sized images, where every loader runs far ahead of a CPU model


def choose(cuda: bool, image_size: int | None, remote: bool = False) -> tuple[str, str]:
    """The backend ``data.loader=auto`` takes, and why: on CUDA the GPU decodes; on a CPU the
    installed backend measured fastest for views ready on data of this kind (BENCHMARKS.md,
    "Choosing a loader"), FFCV left out for its one-time conversion since the model bounds the
    step there anyway; ``remote``: the data is a packed dataset at a URL."""
    if cuda:
        return "nvjpeg", "CUDA: nvJPEG decode and the multi-crop kernel on the GPU"
    if not image_size or image_size > SMALL_IMAGES:
        return "nvjpeg", "CPU, ImageNet-sized images: views ready about 2x DALI and 3x pil here"
    if remote:
        return "nvjpeg", f"CPU, {image_size} px images packed at a URL, which DALI does not read: the next fastest"
    if missing("dali"):
        return "nvjpeg", f"CPU, {image_size} px images, DALI not installed: the next fastest"
    return "dali", (f"CPU, {image_size} px images: DALI makes views 1.7x as fast as nvjpeg here, "
                    "and every loader runs far ahead of the model")
