"""Host memory: keep freed heap memory for reuse instead of handing it back to the kernel.

glibc serves every allocation above its mmap threshold (128 KiB to 32 MiB) with fresh pages
and unmaps them on free, so each batch-sized tensor (a view group, its float copies, a layer's
activations) faults all of its pages in again, zero-filled, on every step: on this project's
CPU path that cost about as much as the photometric arithmetic itself. Serving everything from
the heap and never trimming it makes freed blocks reusable, the effect PyTorch's CPU tuning
guide gets from swapping in jemalloc or tcmalloc, without a preloaded library.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_applied = False


def reuse_freed_memory() -> bool:
    """Sets glibc's malloc to keep freed memory; False where the C library is not glibc."""
    global _applied
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # no mmap for large blocks (they come from the heap), and never trim the heap's top
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
