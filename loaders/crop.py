"""The multi-crop kernel: cut every view of a batch from ragged decoded images in one go.

Filter: antialiased bicubic (Keys cubic, a = -0.5, the support widened by the down-scaling
factor), the filter of PIL's ``Image.resize(..., BICUBIC)`` and of torch's
``interpolate(mode="bicubic", antialias=True)``.

Boxes: an int64 tensor (B, n, 5), the n boxes (top, left, h, w, flip) of each of the B images,
made in the DataLoader workers (:func:`loaders.geometry.view_boxes`).

Two implementations behind :func:`multi_crop`:
- torch (CPU, and CUDA without Triton): one ``interpolate`` per view on the box's slice, written
  into the view's slot of the output; on uint8 CPU tensors it runs torch's vectorised
  fixed-point resampler, which computes channels-last (writing channels-first output cost it
  about 30% more time); images are split over a thread pool, as torch releases the GIL in its
  kernels; flipped views are mirrored in place afterwards. CUDA has no uint8 kernel for this
  filter: there each view is resampled in float, one axis at a time, rounded to 8 bits after
  each pass as the uint8 resampler rounds (within one level of it);
- Triton (CUDA): one launch per resolution group computes all B * n views from a packed
  buffer of the decoded images, flips folded into the sampling position. Each view loops over
  the taps its own scale needs (:func:`view_taps`, a run-time bound: one compile per output
  size); the per-view table (``meta``) is built with tensor ops and crosses to the GPU from
  pinned memory without a host sync. Tested against the torch path on the CPU with
  ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from loaders.batch import channels_last_views

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs may lack Triton; the torch path serves them
    triton = None


def _to_uint8_levels(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.add_(0.5).floor_().clamp_(0, 255)  # rounded half up, as the uint8 resamplers round


def resample_float(region: torch.Tensor, size) -> torch.Tensor:
    """``region`` (1, 3, h, w) uint8 resampled to ``size`` (S, S) in float, for devices without a
    uint8 kernel of the filter (CUDA): horizontally, rounded and clamped to 8 bits, then
    vertically, as torch's uint8 resampler, PIL and the Triton kernel compute (one float resize,
    unrounded between its passes, was 14 levels off them on noise, where the filter overshoots).
    A resize along an axis that keeps its size is exact: its weights are 1 and 0."""
    resize = dict(mode="bicubic", antialias=True, align_corners=False)
    rows = _to_uint8_levels(F.interpolate(region.float(), size=(region.shape[2], size[1]), **resize))
    return _to_uint8_levels(F.interpolate(rows, size=size, **resize)).to(torch.uint8)


def crop_into(out: torch.Tensor, image: torch.Tensor, box) -> None:
    """Resamples one box (top, left, h, w, flip) of a (3, H, W) uint8 image into ``out`` (3, S, S),
    channels-last, the layout torch's uint8 resampler computes in."""
    top, left, h, w, flip = box
    size = out.shape[-2:]
    region = image[None, :, top:top + h, left:left + w]
    if image.device.type == "cpu":
        # the out= form of F.interpolate(mode="bicubic", antialias=True): no temporary view to copy
        torch._C._nn._upsample_bicubic2d_aa(region, size, False, None, None, out=out[None])
    else:
        out.copy_(resample_float(region, size)[0])
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


def as_boxes(boxes) -> torch.Tensor:
    """Boxes as the int64 (B, n, 5) tensor the implementations take (nested lists of (top, left,
    h, w, flip) are accepted where a caller writes them out by hand)."""
    return torch.as_tensor(boxes, dtype=torch.int64)


def multi_crop_torch(images: list[torch.Tensor], boxes, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, B, 3, S, S): ``boxes[b]`` holds the n boxes of image b. Every view is resampled straight
    into its place in ``out`` (allocated when not given)."""
    per_image = as_boxes(boxes).tolist()
    if out is None:
        out = output_buffer(len(per_image[0]), len(images), size, images[0].device)

    def cut(b: int) -> None:
        # channels-last in and out, or torch's resampler refuses the out= form; decoders give
        # channels-last already, the fallback decode channels-first
        image = images[b].movedim(0, -1).contiguous().movedim(-1, 0)
        for v, box in enumerate(per_image[b]):
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
    def _to_8_bits(x):
        return tl.minimum(tl.maximum(tl.floor(x + 0.5), 0.0), 255.0)

    @triton.jit
    def _multi_crop_kernel(src, out, meta, COLUMNS: tl.constexpr, S: tl.constexpr, BLOCK: tl.constexpr):
        view = tl.program_id(0)
        pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = pix < S * S
        oy = pix // S
        ox = pix % S
        m = meta + view * COLUMNS
        offset = tl.load(m + 0)
        height = tl.load(m + 1)
        width = tl.load(m + 2)
        top = tl.load(m + 3)
        left = tl.load(m + 4)
        h = tl.load(m + 5)
        w = tl.load(m + 6)
        flip = tl.load(m + 7)
        taps_y = tl.load(m + 8).to(tl.int32)  # this view's own bounds: run-time loop counts
        taps_x = tl.load(m + 9).to(tl.int32)
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
        for ty in range(taps_y):
            iy = y0 + ty
            wsum_y += tl.where(iy < y1, _cubic((iy.to(tl.float32) - center_y + 0.5) * inv_y), 0.0)
        wsum_x = tl.zeros([BLOCK], dtype=tl.float32)
        for tx in range(taps_x):
            ix = x0 + tx
            wsum_x += tl.where(ix < x1, _cubic((ix.to(tl.float32) - center_x + 0.5) * inv_x), 0.0)
        wsum_y = tl.where(wsum_y == 0, 1.0, wsum_y)  # lanes past the last pixel
        wsum_x = tl.where(wsum_x == 0, 1.0, wsum_x)
        plane = height * width
        acc_r = tl.zeros([BLOCK], dtype=tl.float32)
        acc_g = tl.zeros([BLOCK], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK], dtype=tl.float32)
        for ty in range(taps_y):
            iy = y0 + ty
            wy = tl.where(iy < y1, _cubic((iy.to(tl.float32) - center_y + 0.5) * inv_y), 0.0)
            line = offset + (top + iy).to(tl.int64) * width + left
            row_r = tl.zeros([BLOCK], dtype=tl.float32)
            row_g = tl.zeros([BLOCK], dtype=tl.float32)
            row_b = tl.zeros([BLOCK], dtype=tl.float32)
            for tx in range(taps_x):  # one weight per tap serves the three channels
                ix = x0 + tx
                valid = mask & (iy < y1) & (ix < x1)
                wx = tl.where(ix < x1, _cubic((ix.to(tl.float32) - center_x + 0.5) * inv_x), 0.0)
                address = src + line + ix
                row_r += wx * tl.load(address, mask=valid, other=0).to(tl.float32)
                row_g += wx * tl.load(address + plane, mask=valid, other=0).to(tl.float32)
                row_b += wx * tl.load(address + 2 * plane, mask=valid, other=0).to(tl.float32)
            # the horizontal pass rounds to 8 bits, as PIL's and torch's uint8 resamplers do
            acc_r += wy * _to_8_bits(row_r / wsum_x)
            acc_g += wy * _to_8_bits(row_g / wsum_x)
            acc_b += wy * _to_8_bits(row_b / wsum_x)
        pixel = out + (view * S * S + pix) * 3  # channels-last
        tl.store(pixel, _to_8_bits(acc_r / wsum_y).to(tl.uint8), mask=mask)
        tl.store(pixel + 1, _to_8_bits(acc_g / wsum_y).to(tl.uint8), mask=mask)
        tl.store(pixel + 2, _to_8_bits(acc_b / wsum_y).to(tl.uint8), mask=mask)


META_COLUMNS = 10  # offset, height, width, top, left, h, w, flip, taps_y, taps_x


def view_taps(extent: torch.Tensor, size: int) -> torch.Tensor:
    """Taps per output pixel along one axis, for boxes ``extent`` pixels long cut to ``size``: the
    filter reaches 2 * max(extent / size, 1) pixels either side of a pixel's centre, so its window
    holds at most floor(4 * max(extent / size, 1)) + 1 input pixels; ceil(...) + 2, in integers,
    leaves room for the kernel's float32 rounding of the window's ends."""
    return torch.clamp((4 * extent + size - 1) // size, min=4) + 2


def crop_meta(images: list[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The kernel's table, (n * B, META_COLUMNS) int64 on the host, view-major as the output: for
    each view its image's offset in the packed buffer, height and width, its box (top, left, h, w,
    flip) and its taps per axis (:func:`view_taps`)."""
    shapes = torch.tensor([im.shape[1:] for im in images], dtype=torch.int64)  # (B, 2): height, width
    pixels = 3 * shapes.prod(1)
    per_image = torch.cat([(pixels.cumsum(0) - pixels)[:, None], shapes], 1)  # (B, 3)
    n = boxes.shape[1]
    rows = torch.cat([per_image[:, None].expand(-1, n, -1), boxes], 2).transpose(0, 1).reshape(-1, 8)
    return torch.cat([rows, view_taps(rows[:, 5:7], size)], 1)


def multi_crop_triton(images: list[torch.Tensor], boxes, size: int) -> torch.Tensor:
    """The Triton path: one launch for all B * n views of a resolution group."""
    device = images[0].device
    boxes = as_boxes(boxes)
    batch, n = boxes.shape[:2]
    packed = torch.cat([im.reshape(-1) for im in images])
    meta = crop_meta(images, boxes, size)
    if device.type == "cuda":
        # pinned, so the copy is asynchronous; the caching host allocator keeps the pinned block
        # until the copy has run, though ``meta``'s host tensor goes out of scope here
        meta = meta.pin_memory().to(device, non_blocking=True)
    out = output_buffer(n, batch, size, device)
    block = 256
    grid = (n * batch, triton.cdiv(size * size, block))
    _multi_crop_kernel[grid](packed, out, meta, COLUMNS=META_COLUMNS, S=size, BLOCK=block)
    return out


def triton_usable(device: torch.device) -> bool:
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def multi_crop(images: list[torch.Tensor], boxes, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """All views of one resolution group: uint8 (n, B, 3, S, S) on the images' device, channels-last,
    written into ``out`` when given (the CPU path)."""
    if images[0].device.type == "cuda" and triton_usable(images[0].device):
        return multi_crop_triton(images, boxes, size)
    return multi_crop_torch(images, boxes, size, out)
