"""Per-step schedules, precomputed once (as in DINO): cosine with linear warm-up."""

from __future__ import annotations

import numpy as np


def cosine(base: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0):
    """A linear warm-up from ``warmup_start`` that reaches ``base`` at its last step, then a cosine
    from ``base`` to ``final``: DINO's and SSLight's ``cosine_scheduler``, step by step."""
    warmup = np.linspace(warmup_start, base, warmup_steps)
    steps = np.arange(max(total_steps - warmup_steps, 0))
    decay = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([warmup, decay])[:total_steps]


def linear_then_constant(start: float, end: float, total_steps: int, ramp_steps: int):
    ramp = np.linspace(start, end, min(ramp_steps, total_steps))
    return np.concatenate([ramp, np.full(total_steps - len(ramp), end)])
