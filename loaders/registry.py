"""Loader backends by name."""

from __future__ import annotations

from loaders.dali import DaliLoader
from loaders.ffcv import FfcvLoader
from loaders.nvjpeg import NvjpegLoader
from loaders.pil import PilLoader
from loaders.synthetic import SyntheticLoader

BACKENDS = {"pil": PilLoader, "nvjpeg": NvjpegLoader, "dali": DaliLoader, "ffcv": FfcvLoader, "synthetic": SyntheticLoader}


def build_loader(name: str, split, groups, batch_size: int, seed: int, device, workers: int,
                 rank: int = 0, world: int = 1):
    return BACKENDS[name](split, groups, batch_size, seed, device, workers, rank, world)
