"""A run's forward precision (``train.precision``): its dtype and the autocast that applies it."""

from __future__ import annotations

import contextlib

import torch


def dtype_of(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on ``device``; for fp32 no autocast at all (a disabled one would also switch
    off an autocast that an outer caller has in force)."""
    if dtype == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
