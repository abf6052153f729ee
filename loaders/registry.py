"""Loader backends by name."""

from __future__ import annotations

from loaders import dali, ffcv
from loaders.batch import Loader
from loaders.dali import DaliLoader
from loaders.ffcv import FfcvLoader
from loaders.nvjpeg import NvjpegLoader
from loaders.pil import PilLoader
from loaders.synthetic import SyntheticLoader

BACKENDS = {"pil": PilLoader, "nvjpeg": NvjpegLoader, "dali": DaliLoader, "ffcv": FfcvLoader, "synthetic": SyntheticLoader}


def build_loader(name: str, split, groups, batch_size: int, seed: int, device, workers: int,
                 rank: int = 0, world: int = 1) -> Loader:
    return BACKENDS[name](split, groups, batch_size, seed, device, workers, rank, world)


# optional backends: (is it importable, how to install it)
OPTIONAL = {"dali": (dali.available, "pip install -e '.[dali]'"),
            "ffcv": (ffcv.available, "apt-get install libturbojpeg0-dev libopencv-dev pkg-config, "
                                     "then pip install -e '.[ffcv]'")}


def missing(name: str) -> str | None:
    """How to install backend ``name`` when it is not importable here; None when it is."""
    is_available, hint = OPTIONAL.get(name, (lambda: True, ""))
    return None if is_available() else hint
