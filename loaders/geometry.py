"""Random-resized-crop and flip parameters, keyed on (seed, epoch, sample index).

Keying every sample's randomness on its own key makes views independent of worker count
and batch composition, so a resumed run sees exactly the views of an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def crop_box(rng: np.random.Generator, width: int, height: int, scale, ratio) -> tuple[int, int, int, int]:
    """(top, left, h, w) with torchvision's RandomResizedCrop rule: 10 tries, then a centre crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_params(seed: int, epoch: int, index: int, width: int, height: int, groups):
    """For each group, a list of (top, left, h, w, flip) per view, in view order."""
    rng = sample_rng(seed, epoch, index)
    out = []
    for g in groups:
        boxes = []
        for _ in range(g.n):
            box = crop_box(rng, width, height, g.scale, g.ratio)
            boxes.append((*box, bool(rng.random() < 0.5)))
        out.append(boxes)
    return out
