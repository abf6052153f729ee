"""Image helpers every backend and the evaluation share: any file PIL reads, as RGB."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def open_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")  # greyscale, CMYK, palette and RGBA all become RGB


def to_uint8_chw(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
