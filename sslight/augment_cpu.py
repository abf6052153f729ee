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
    n, ch, h, w = views.shape
    means = np.empty((n, ch), np.float64)
    for i in prange(n):
        for c in range(ch):
            total = 0
            for a in range(h):
                for b in range(w):
                    total += views[i, c, a, b]
            means[i, c] = total / (h * w)
    return means


@njit(parallel=True, fastmath=True, cache=True)
def _photometric(views, matrix, offset, kernel, blur_on, solarize_on, threshold, scale, shift, out):
    n, _, h, w = views.shape
    reach = (kernel.shape[1] - 1) // 2
    for i in prange(n):
        r = 0
        if blur_on[i]:  # the taps of kernel i that are not zero: its own radius, not the widest one
            for t in range(reach):
                if kernel[i, t] != 0:
                    r = reach - t
                    break
        taps = 2 * r + 1
        k = kernel[i, reach - r:reach + r + 1]
        padded = np.empty((h + 2 * r, w + 2 * r), np.float32)  # one colour plane, reflect-padded by r
        rows = np.empty((h + 2 * r, w), np.float32)  # after the horizontal pass
        line = np.empty(w, np.float32)
        solarize = solarize_on[i]
        for c in range(3):
            m0, m1, m2, oc = matrix[i, c, 0], matrix[i, c, 1], matrix[i, c, 2], offset[i, c]
            sc, sh = scale[c], shift[c]
            for a in range(h):
                row = padded[a + r]
                for b in range(w):
                    v = m0 * views[i, 0, a, b] + m1 * views[i, 1, a, b] + m2 * views[i, 2, a, b] + oc
                    row[b + r] = min(max(v, np.float32(0)), np.float32(1))
                for t in range(1, r + 1):
                    row[r - t] = row[r + t]
                    row[r + w - 1 + t] = row[r + w - 1 - t]
            for t in range(1, r + 1):
                padded[r - t] = padded[r + t]
                padded[r + h - 1 + t] = padded[r + h - 1 - t]
            if r:
                for a in range(h + 2 * r):
                    src, dst = padded[a], rows[a]
                    for b in range(w):
                        dst[b] = k[0] * src[b]
                    for t in range(1, taps):
                        kt = k[t]
                        for b in range(w):
                            dst[b] += kt * src[b + t]
            for a in range(h):
                if r:
                    for b in range(w):
                        line[b] = k[0] * rows[a, b]
                    for t in range(1, taps):
                        kt = k[t]
                        for b in range(w):
                            line[b] += kt * rows[a + t, b]
                else:
                    line[:] = padded[a]
                if solarize:
                    for b in range(w):
                        if line[b] >= threshold:
                            line[b] = 1 - line[b]
                for b in range(w):
                    out[i, a, b, c] = line[b] * sc + sh


def _use_torch_threads() -> None:
    """Numba's pool follows torch's thread setting, so the two do not oversubscribe the cores."""
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _array(t: torch.Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy(), dtype=dtype)


def channel_means(views: torch.Tensor) -> torch.Tensor:
    """(n, 3) float32 means in 0..255 of uint8 views (n, 3, H, W), without a float copy of the views."""
    _use_torch_threads()
    return torch.from_numpy(_channel_means(views.contiguous().numpy())).float()


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
    _photometric(views.contiguous().numpy(), _array(matrix, np.float32), _array(offset, np.float32),
                 _array(kernel, np.float32), _array(blur_on, np.bool_), _array(solarize_on, np.bool_),
                 np.float32(threshold), _array(scale.flatten(), np.float32), _array(shift.flatten(), np.float32),
                 out)
    return torch.from_numpy(out).permute(0, 3, 1, 2)
