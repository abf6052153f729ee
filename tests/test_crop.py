"""The multi-crop kernel's parts that the GPU runs, checked on the CPU: the taps each view loops
over, the table the launch reads, the float resampler CUDA falls back to, and the Triton kernel
itself, interpreted (``TRITON_INTERPRET=1``), against the torch path."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from loaders.crop import META_COLUMNS, crop_meta, multi_crop_torch, resample_float, view_taps
from tests.test_nvjpeg import natural_image


def window_lengths(extent: int, size: int) -> np.ndarray:
    """The pixels each output pixel's window holds along one axis, as the kernel computes its ends
    (float32, truncation toward zero, clamped to the box)."""
    scale = np.float32(extent) / np.float32(size)
    support = np.float32(2.0) * max(scale, np.float32(1.0))
    centre = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale
    start = np.maximum(np.trunc(centre - support + np.float32(0.5)), 0)
    end = np.minimum(np.trunc(centre + support + np.float32(0.5)), extent)
    return end - start


def test_view_taps_cover_every_window_and_follow_the_views_own_scale():
    for size in (6, 18, 24, 96, 224):
        extents = np.unique(np.geomspace(1, 40 * size, 300).astype(int))
        taps = view_taps(torch.from_numpy(extents), size).numpy()
        needed = np.array([window_lengths(int(e), size).max() for e in extents])
        assert (taps >= needed).all(), (size, extents[taps < needed])
        # where the box is cut down, at most 3 taps more than its widest window (rounding up, and
        # the slack for the kernel's rounding): a view's loop follows its own scale; up-scaled
        # views all take the least, 6
        down = extents >= size
        assert (taps[down] <= needed[down] + 3).all(), (size, extents[down][taps[down] > needed[down] + 3])
        assert (taps[~down] == 6).all()


def test_meta_gives_each_view_the_taps_of_its_own_box():
    """One huge image in the group leaves the taps of the other views where their own boxes put
    them (the kernel once looped every view over the taps of the group's largest box)."""
    shapes = [(6000, 4000), (375, 500), (48, 64)]
    images = [torch.zeros(3, 1, 1, dtype=torch.uint8).expand(3, h, w) for h, w in shapes]
    boxes = torch.tensor([[[0, 0, 6000, 4000, 0], [100, 50, 2000, 1500, 1]],
                          [[10, 20, 300, 400, 1], [0, 0, 20, 30, 0]],
                          [[0, 0, 48, 64, 0], [8, 8, 12, 12, 1]]])
    meta = crop_meta(images, boxes, 24)
    assert meta.shape == (2 * 3, META_COLUMNS) and meta.dtype == torch.int64
    offsets = [0, 3 * 6000 * 4000, 3 * 6000 * 4000 + 3 * 375 * 500]
    for v in range(2):  # view-major, as the output (n, B, ...)
        for b, (h, w) in enumerate(shapes):
            row = meta[v * 3 + b].tolist()
            assert row[:3] == [offsets[b], h, w] and row[3:8] == boxes[b, v].tolist()
            assert row[8:] == view_taps(boxes[b, v, 2:4], 24).tolist()
    assert meta[:, 8:].tolist() == [[1002, 669], [52, 69], [10, 13], [336, 252], [6, 7], [6, 6]]


def test_float_resampler_is_within_one_level_of_the_uint8_path():
    """CUDA has no uint8 kernel of the filter: the fallback resamples in float and rounds. Its
    horizontal pass is not rounded to 8 bits, so it may differ from the uint8 path by one level."""
    image = torch.from_numpy(natural_image(500, 375)).permute(2, 0, 1)
    noise = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 120, 90), dtype=np.uint8))
    for im in (image, noise):
        for box, size in [((10, 20, 300, 400), 96), ((0, 0, im.shape[1], im.shape[2]), 224), ((5, 7, 30, 20), 64),
                          ((0, 0, 40, 40), 40)]:
            top, left, h, w = box
            ours = resample_float(im[None, :, top:top + h, left:left + w], (size, size))[0].int()
            ref = multi_crop_torch([im], [[(*box, 0)]], size)[0, 0].int()
            diff = (ours - ref).abs()
            assert diff.max() <= 1 and diff.float().mean() < 0.1, (box, size, diff.max(), diff.float().mean())


TRITON_CHECK = r"""
import torch, numpy as np
from loaders.crop import multi_crop_torch, multi_crop_triton, resample_float
rng = np.random.default_rng(0)

def compare(name, images, boxes, size):
    a = multi_crop_torch(images, boxes, size).int()
    b = multi_crop_triton(images, boxes, size).int()
    assert a.shape == b.shape, (a.shape, b.shape)
    # the fallback CUDA takes without Triton, computed here on the CPU
    c = torch.stack([torch.stack([resample_float(im[None, :, t:t + h, l:l + w], (size, size))[0].flip(-1) if f
                                  else resample_float(im[None, :, t:t + h, l:l + w], (size, size))[0]
                                  for (t, l, h, w, f) in per_image]) for im, per_image in zip(images, boxes)])
    c = c.transpose(0, 1).int()
    for other, d in (("triton", (a - b).abs()), ("float", (a - c).abs()), ("float-triton", (b - c).abs())):
        print(name, size, other, d.max().item(), d.float().mean().item())

# small ragged images, random boxes, both flips
images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in [(20, 26), (12, 15), (30, 9)]]
for size in (8, 6):
    boxes = []
    for im in images:
        h, w = im.shape[1:]
        views = []
        for v in range(2):
            bh, bw = int(rng.integers(4, h + 1)), int(rng.integers(4, w + 1))
            views.append((int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw, v))
        boxes.append(views)
    compare("small", images, boxes, size)

# ImageNet-sized images in one launch with a small one, at scales from 1/2 to 6: each view loops
# over its own taps (the interpreter's time grows with the boxes' area, so the boxes stay small)
images = [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1)
          for h, w in [(375, 500), (500, 333), (48, 64)]]
boxes = [[(200, 300, 96, 72, 1), (0, 0, 8, 10, 0)], [(450, 10, 50, 60, 0), (100, 200, 16, 16, 1)],
         [(0, 0, 48, 64, 1), (10, 30, 30, 20, 0)]]
compare("imagenet", images, boxes, 16)
"""


def test_triton_kernel_and_float_fallback_match_the_torch_path_interpreted():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")  # read when triton is imported: a fresh process
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.split() for line in proc.stdout.splitlines() if line]
    assert len(lines) == 3 * 3
    for name, size, other, max_diff, mean_diff in lines:
        # torch's uint8 resampler is fixed point, the kernel and the fallback float: rounding may
        # differ by 1 (and the fallback does not round its horizontal pass)
        assert int(max_diff) <= 1 and float(mean_diff) < 0.1, (name, size, other, max_diff, mean_diff)
