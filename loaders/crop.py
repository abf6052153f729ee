"""The multi-crop kernel: cut every view of a batch from ragged decoded images in one go.

Filter: antialiased bicubic (Keys cubic, a = -0.5, the support widened by the down-scaling
factor), the filter of PIL's ``Image.resize(..., BICUBIC)`` and of torch's
``interpolate(mode="bicubic", antialias=True)``.

Two implementations behind :func:`multi_crop`:
- torch (CPU, and CUDA without Triton): one ``interpolate`` per view on the box's slice, written
  into the view's slot of the output; on uint8 CPU tensors it runs torch's vectorised
  fixed-point resampler, which computes channels-last (writing channels-first output cost it
  about 30% more time); images are split over a thread pool, as torch releases the GIL in its
  kernels; flipped views are mirrored in place afterwards;
- Triton (CUDA): one launch per resolution group computes all B * n views from a packed
  buffer of the decoded images, flips folded into the sampling position; tested against the
  torch path on the CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from loaders.batch import channels_last_views

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs may lack Triton; the torch path serves them
    triton = None


def crop_into(out: torch.Tensor, image: torch.Tensor, box) -> None:
    """Resamples one box (top, left, h, w, flip) of a (3, H, W) uint8 image into ``out`` (3, S, S),
    channels-last, the layout torch's uint8 resampler computes in."""
    top, left, h, w, flip = box
    size = out.shape[-2:]
    # the out= form of F.interpolate(mode="bicubic", antialias=True): no temporary view to copy
    torch._C._nn._upsample_bicubic2d_aa(image[None, :, top:top + h, left:left + w], size, False, None, None,
                                         out=out[None])
    if flip:
        out.copy_(out.flip(-1))


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def map_threads(fn, items) -> list:
    """``fn`` over ``items`` on the process's thread pool (torch releases the GIL in its kernels),
    in line where torch has one thread, as in a DataLoader worker. A forked worker makes its own
    pool: the parent's threads do not survive a fork."""
    global _POOL
    if len(items) < 2 or torch.get_num_threads() < 2:
        return [fn(item) for item in items]
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = os.getpid(), ThreadPoolExecutor(torch.get_num_threads(), thread_name_prefix="sslight-crop")
    return list(_POOL[1].map(fn, items))


def output_buffer(n: int, batch: int, size: int, device: torch.device) -> torch.Tensor:
    """Empty uint8 views (n, B, 3, S, S), channels-last."""
    return channels_last_views(torch.empty((n, batch, size, size, 3), dtype=torch.uint8, device=device))


def _pixels_shape(group, batch: int) -> tuple[int, ...]:
    return group.n, batch, group.size, group.size, 3


def batch_bytes(groups, batch: int) -> int:
    return sum(math.prod(_pixels_shape(g, batch)) for g in groups)


def views_in(storage: torch.UntypedStorage, groups, batch: int) -> list[torch.Tensor]:
    """Every group's views (n, B, 3, S, S), channels-last, one after another in ``storage``."""
    out, start = [], 0
    for g in groups:
        shape = _pixels_shape(g, batch)
        out.append(channels_last_views(torch.empty(0, dtype=torch.uint8).set_(storage, start, shape)))
        start += math.prod(shape)
    return out


def multi_crop_torch(images: list[torch.Tensor], boxes: list[list[tuple]], size: int,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, B, 3, S, S): ``boxes[b]`` lists the n boxes of image b. Every view is resampled straight
    into its place in ``out`` (allocated when not given)."""
    if out is None:
        out = output_buffer(len(boxes[0]), len(images), size, images[0].device)

    def cut(b: int) -> None:
        # channels-last in and out, or torch's resampler refuses the out= form; decoders give
        # channels-last already, the fallback decode channels-first
        image = images[b].movedim(0, -1).contiguous().movedim(-1, 0)
        for v, box in enumerate(boxes[b]):
            crop_into(out[v, b], image, box)

    if images[0].device.type == "cpu":
        map_threads(cut, range(len(images)))
    else:
        for b in range(len(images)):
            cut(b)
    return out


if triton is not None:
    @triton.jit
    def _cubic(x):
        # Keys cubic convolution with a = -0.5 (PIL, torch antialias)
        x = tl.abs(x)
        a = -0.5
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return tl.where(x < 1, near, tl.where(x < 2, far, 0.0))

    @triton.jit
    def _multi_crop_kernel(src, out, meta, S: tl.constexpr, TAPS_Y: tl.constexpr, TAPS_X: tl.constexpr,
                           BLOCK: tl.constexpr):
        view = tl.program_id(0)
        pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = pix < S * S
        oy = pix // S
        ox = pix % S
        m = meta + view * 8
        offset = tl.load(m + 0)
        height = tl.load(m + 1)
        width = tl.load(m + 2)
        top = tl.load(m + 3)
        left = tl.load(m + 4)
        h = tl.load(m + 5)
        w = tl.load(m + 6)
        flip = tl.load(m + 7)
        ox = tl.where(flip != 0, S - 1 - ox, ox)
        scale_y = h.to(tl.float32) / S
        scale_x = w.to(tl.float32) / S
        support_y = 2.0 * tl.maximum(scale_y, 1.0)
        support_x = 2.0 * tl.maximum(scale_x, 1.0)
        inv_y = 1.0 / tl.maximum(scale_y, 1.0)
        inv_x = 1.0 / tl.maximum(scale_x, 1.0)
        center_y = (oy.to(tl.float32) + 0.5) * scale_y
        center_x = (ox.to(tl.float32) + 0.5) * scale_x
        # taps lie in the box, as when resizing the cropped slice on its own
        y0 = tl.maximum((center_y - support_y + 0.5).to(tl.int32), 0)
        y1 = tl.minimum((center_y + support_y + 0.5).to(tl.int32), h)
        x0 = tl.maximum((center_x - support_x + 0.5).to(tl.int32), 0)
        x1 = tl.minimum((center_x + support_x + 0.5).to(tl.int32), w)
        wsum_y = tl.zeros([BLOCK], dtype=tl.float32)
        for ty in range(TAPS_Y):
            iy = y0 + ty
            wsum_y += tl.where(iy < y1, _cubic((iy.to(tl.float32) - center_y + 0.5) * inv_y), 0.0)
        wsum_x = tl.zeros([BLOCK], dtype=tl.float32)
        for tx in range(TAPS_X):
            ix = x0 + tx
            wsum_x += tl.where(ix < x1, _cubic((ix.to(tl.float32) - center_x + 0.5) * inv_x), 0.0)
        wsum_y = tl.where(wsum_y == 0, 1.0, wsum_y)  # lanes past the last pixel
        wsum_x = tl.where(wsum_x == 0, 1.0, wsum_x)
        plane = height * width
        for c in range(3):
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for ty in range(TAPS_Y):
                iy = y0 + ty
                wy = tl.where(iy < y1, _cubic((iy.to(tl.float32) - center_y + 0.5) * inv_y), 0.0)
                row = tl.zeros([BLOCK], dtype=tl.float32)
                for tx in range(TAPS_X):
                    ix = x0 + tx
                    valid = mask & (iy < y1) & (ix < x1)
                    wx = tl.where(ix < x1, _cubic((ix.to(tl.float32) - center_x + 0.5) * inv_x), 0.0)
                    address = offset + c * plane + (top + iy).to(tl.int64) * width + left + ix
                    value = tl.load(src + address, mask=valid, other=0).to(tl.float32)
                    row += wx * value
                # the horizontal pass rounds to 8 bits, as PIL's and torch's uint8 resamplers do
                row = tl.minimum(tl.maximum(tl.floor(row / wsum_x + 0.5), 0.0), 255.0)
                acc += wy * row
            acc = acc / wsum_y
            result = tl.minimum(tl.maximum(acc + 0.5, 0.0), 255.0).to(tl.uint8)
            tl.store(out + (view * S * S + pix) * 3 + c, result, mask=mask)  # channels-last


def _taps(scale_max: float) -> int:
    """Static tap count per axis, rounded up to a power of two to bound recompilation."""
    needed = math.ceil(2 * 2.0 * max(scale_max, 1.0)) + 2
    return 1 << (needed - 1).bit_length()


def multi_crop_triton(images: list[torch.Tensor], boxes: list[list[tuple]], size: int) -> torch.Tensor:
    """The Triton path: one launch for all B * n views of a resolution group."""
    device = images[0].device
    batch, n = len(images), len(boxes[0])
    offsets, running = [], 0
    for im in images:
        offsets.append(running)
        running += im.numel()
    packed = torch.cat([im.reshape(-1) for im in images])
    rows = []
    for v in range(n):  # view-major, to match the (n, B, ...) layout
        for b, im in enumerate(images):
            top, left, h, w, flip = boxes[b][v]
            rows.append([offsets[b], im.shape[1], im.shape[2], top, left, h, w, int(flip)])
    meta = torch.tensor(rows, dtype=torch.int64).to(device)
    scale_y = max(r[5] for r in rows) / size
    scale_x = max(r[6] for r in rows) / size
    out = output_buffer(n, batch, size, device)
    block = 128
    grid = (n * batch, triton.cdiv(size * size, block))
    _multi_crop_kernel[grid](packed, out, meta, S=size, TAPS_Y=_taps(scale_y), TAPS_X=_taps(scale_x), BLOCK=block)
    return out


def triton_usable(device: torch.device) -> bool:
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def multi_crop(images: list[torch.Tensor], boxes: list[list[tuple]], size: int,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """All views of one resolution group: uint8 (n, B, 3, S, S) on the images' device, channels-last,
    written into ``out`` when given (the CPU path)."""
    if images[0].device.type == "cuda" and triton_usable(images[0].device):
        return multi_crop_triton(images, boxes, size)
    return multi_crop_torch(images, boxes, size, out)
