"""Random-resized-crop and flip parameters, keyed on (seed, epoch, sample index).

Keying every sample's randomness on its own key makes views independent of worker count
and batch composition, so a resumed run sees exactly the views of an uninterrupted one.
"""

from __future__ import annotations

import math
from itertools import islice

import numpy as np
import torch


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


TRIES = 10
BOX_DRAWS = 2 * TRIES + 2  # (area, log-ratio) per try, then top and left
VIEW_DRAWS = BOX_DRAWS + 1  # and the flip


def crop_box(u, width: int, height: int, scale, ratio) -> tuple[int, int, int, int]:
    """(top, left, h, w) with torchvision's RandomResizedCrop rule, from ``BOX_DRAWS`` uniforms in
    [0, 1): 10 tries, then a centre crop."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for t in range(TRIES):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[2 * t])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * t + 1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2 * TRIES] * (height - h + 1)), int(u[2 * TRIES + 1] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_params(seed: int, epoch: int, index: int, width: int, height: int, groups):
    """For each group, a list of (top, left, h, w, flip) per view, in view order. All of a sample's
    draws come in one call: the generator's per-call overhead, not its arithmetic, was the cost."""
    draws = iter(sample_rng(seed, epoch, index).random((sum(g.n for g in groups), VIEW_DRAWS)).tolist())
    return [[(*crop_box(u, width, height, g.scale, g.ratio), u[BOX_DRAWS] < 0.5) for u in islice(draws, g.n)]
            for g in groups]


def view_boxes(seed: int, epoch: int, index: int, width: int, height: int, groups) -> torch.Tensor:
    """:func:`view_params` as one int64 tensor (views of all groups, 5): (top, left, h, w, flip),
    the groups' views one after another."""
    return torch.tensor([box for group in view_params(seed, epoch, index, width, height, groups) for box in group],
                        dtype=torch.int64).reshape(-1, 5)
