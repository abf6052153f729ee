"""A per-rank trace of what each step saw and produced, for checking data-parallel runs:
SSLIGHT_TRACE_DIR=dir writes dir/rank<R>.jsonl with, per step, the sample indices of the
batch and digests of the parameters and of the method's own state (DINO centre, queues).
Replicas in sync have equal digests at every step; costs a host copy of the model per step."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Tracer:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, step: int, batch, method: nn.Module) -> None:
        record = dict(step=step, indices=batch.indices.tolist(), params=digest(method.parameters()),
                      state=digest(b for _, b in sorted(method.named_buffers(recurse=False))))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def from_env(rank: int) -> Tracer | None:
    folder = os.environ.get("SSLIGHT_TRACE_DIR")
    return Tracer(Path(folder) / f"rank{rank}.jsonl") if folder else None
