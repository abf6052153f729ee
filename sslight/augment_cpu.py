"""The CPU photometric kernel: colour matrix, clamp, blur, solarize and normalise fused in one pass.

On the CPU, the batched tensor ops of ``sslight.augment`` stream every view through memory
about a dozen times (float conversion, matmul, clamp, pad, two convolutions, normalise), and
their time goes to memory traffic and page faults, not arithmetic. This kernel keeps one plane
of one view in cache while it goes from uint8 to the normalised channels-last output, with
views spread over threads. It computes what the tensor ops compute from the same per-sample
parameters (tests compare the two), and the parameters themselves still come from
``Photometric`` in torch, so the random draws are the same on every device.

Numba (a runtime dependency) compiles it on first use and caches the machine code beside
this file, so later processes load it in well under a second.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import torch
from numba import njit, prange


@njit(parallel=True, cache=True)
def _channel_means(views):
    n, h, w, ch = views.shape
    means = np.empty((n, ch), np.float64)
    for i in prange(n):
        for c in range(ch):
            total = 0
            for a in range(h):
                for b in range(w):
                    total += views[i, a, b, c]
            means[i, c] = total / (h * w)
    return means


@njit(parallel=True, fastmath=True, cache=True)
def _photometric(views, matrix, offset, kernel, blur_on, solarize_on, threshold, scale, shift, out):
    n, h, w, _ = views.shape
    reach = (kernel.shape[1] - 1) // 2
    zero, one = np.float32(0), np.float32(1)
    for i in prange(n):
        r = 0
        if blur_on[i]:  # the taps of kernel i that are not zero: its own radius, not the widest one
            for t in range(reach):
                if kernel[i, t] != 0:
                    r = reach - t
                    break
        taps = 2 * r + 1
        k = kernel[i, reach - r:reach + r + 1]
        m, o = matrix[i], offset[i]
        # the three colour planes, reflect-padded by r; blurred in place, row by row
        planes = np.empty((3, h + 2 * r, w + 2 * r), np.float32)
        line = np.empty(w, np.float32)
        lines = np.empty((3, w), np.float32)
        # each pixel is read once (its three channels lie side by side) and gives all three planes
        for a in range(h):
            p0, p1, p2 = planes[0, a + r], planes[1, a + r], planes[2, a + r]
            for b in range(w):
                x0, x1, x2 = np.float32(views[i, a, b, 0]), np.float32(views[i, a, b, 1]), np.float32(views[i, a, b, 2])
                p0[b + r] = min(max(m[0, 0] * x0 + m[0, 1] * x1 + m[0, 2] * x2 + o[0], zero), one)
                p1[b + r] = min(max(m[1, 0] * x0 + m[1, 1] * x1 + m[1, 2] * x2 + o[1], zero), one)
                p2[b + r] = min(max(m[2, 0] * x0 + m[2, 1] * x1 + m[2, 2] * x2 + o[2], zero), one)
        if r:
            for c in range(3):
                plane = planes[c]
                for a in range(r, h + r):
                    row = plane[a]
                    for t in range(1, r + 1):
                        row[r - t] = row[r + t]
                        row[r + w - 1 + t] = row[r + w - 1 - t]
                for t in range(1, r + 1):
                    plane[r - t] = plane[r + t]
                    plane[r + h - 1 + t] = plane[r + h - 1 - t]
                for a in range(h + 2 * r):  # horizontal pass; its result replaces the row's first w
                    row = plane[a]
                    for b in range(w):
                        line[b] = k[0] * row[b]
                    for t in range(1, taps):
                        kt = k[t]
                        for b in range(w):
                            line[b] += kt * row[b + t]
                    row[:w] = line
        solarize = solarize_on[i]
        for a in range(h):
            for c in range(3):
                dst = lines[c]
                if r:  # vertical pass
                    for b in range(w):
                        dst[b] = k[0] * planes[c, a, b]
                    for t in range(1, taps):
                        kt = k[t]
                        src = planes[c, a + t]
                        for b in range(w):
                            dst[b] += kt * src[b]
                else:
                    dst[:] = planes[c, a]
                if solarize:
                    for b in range(w):
                        if dst[b] >= threshold:
                            dst[b] = 1 - dst[b]
            for b in range(w):
                out[i, a, b, 0] = lines[0, b] * scale[0] + shift[0]
                out[i, a, b, 1] = lines[1, b] * scale[1] + shift[1]
                out[i, a, b, 2] = lines[2, b] * scale[2] + shift[2]


def _use_torch_threads() -> None:
    """Numba's pool follows torch's thread setting, so the two do not oversubscribe the cores."""
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _array(t: torch.Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy(), dtype=dtype)


def _pixels(views: torch.Tensor) -> np.ndarray:
    """(n, H, W, 3) uint8 pixels of views (n, 3, H, W); no copy for channels-last views (the loaders')."""
    return views.movedim(1, -1).contiguous().numpy()


def channel_means(views: torch.Tensor) -> torch.Tensor:
    """(n, 3) float32 means in 0..255 of uint8 views (n, 3, H, W), without a float copy of the views."""
    _use_torch_threads()
    return torch.from_numpy(_channel_means(_pixels(views))).float()


_OUTPUTS: dict[tuple[int, ...], torch.Tensor] = {}
_OUTPUTS_LOCK = threading.Lock()  # the check and the taking of a buffer are one step


def _output(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 buffer of ``shape``, the previous one of that shape when nothing outside this
    module still uses it. Fresh allocations this large come from the OS as pages that are zeroed
    and faulted in one by one, at a cost close to the kernel's own; a consumer that drops its
    views before asking for the next batch gets them without that cost."""
    with _OUTPUTS_LOCK:
        buffer = _OUTPUTS.get(shape)
        # two users when unused: the cached tensor and the storage object made to count them
        if buffer is None or torch._C._storage_Use_Count(buffer.untyped_storage()._cdata) > 2:
            buffer = _OUTPUTS[shape] = torch.empty(shape)
        return buffer.numpy()


def photometric(views: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor, kernel: torch.Tensor,
                blur_on: torch.Tensor, solarize_on: torch.Tensor, threshold: float,
                scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 3, H, W) -> float32 (n, 3, H, W) channels-last: ``clamp(M @ x + o, 0, 1)``, then the
    separable blur with ``kernel`` (n, 2r+1) where ``blur_on``, solarize where ``solarize_on``, and
    ``x * scale + shift`` per channel."""
    n, _, h, w = views.shape
    out = _output((n, h, w, 3))
    _use_torch_threads()
    _photometric(_pixels(views), _array(matrix, np.float32), _array(offset, np.float32),
                 _array(kernel, np.float32), _array(blur_on, np.bool_), _array(solarize_on, np.bool_),
                 np.float32(threshold), _array(scale.flatten(), np.float32), _array(shift.flatten(), np.float32),
                 out)
    return torch.from_numpy(out).permute(0, 3, 1, 2)
