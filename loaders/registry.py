"""Loader backends by name."""

from __future__ import annotations

from loaders.pil import PilLoader

BACKENDS = {"pil": PilLoader}


def build_loader(name: str, split, groups, batch_size: int, seed: int, device, workers: int,
                 rank: int = 0, world: int = 1):
    return BACKENDS[name](split, groups, batch_size, seed, device, workers, rank, world)
