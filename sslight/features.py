"""Frozen backbone features, extracted once and cached beside the checkpoint.

A cache file is named by a digest of everything its content depends on: the checkpoint's bytes,
the split's files and labels, the image size, the flip, and the forward precision. Another
checkpoint or dataset gives another name, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sslight.checkpoint import save_atomic
from sslight.knn import extract


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_digest(split) -> str:
    h = hashlib.sha256()
    for f, label in zip(split.files, split.labels):
        h.update(f"{f}\t{label}\n".encode())
    return h.hexdigest()


class FeatureCache:
    def __init__(self, ckpt: Path, backbone, size: int, device, dtype, workers: int):
        self.folder = ckpt.parent / "features"
        self.stem, self.ckpt_digest = ckpt.stem, file_digest(ckpt)
        self.backbone, self.size, self.device, self.dtype, self.workers = backbone, size, device, dtype, workers

    def path(self, split, flip: bool) -> Path:
        key = "|".join([self.ckpt_digest, split_digest(split), str(self.size), str(flip), str(self.dtype)])
        return self.folder / f"{self.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"

    def get(self, split, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D) float32, labels (N,)) on the device, from the cache when it has them."""
        path = self.path(split, flip)
        if path.exists():
            saved = torch.load(path, map_location=self.device)
            return saved["features"].float(), saved["labels"]
        feats, labels = extract(self.backbone, split, self.size, self.device, self.dtype, self.workers, flip=flip)
        self.folder.mkdir(exist_ok=True)
        # stored in the forward's precision: bf16 outputs lose nothing, fp32 ones stay exact
        save_atomic(dict(features=feats.to(self.dtype).cpu(), labels=labels.cpu()), path)
        return feats, labels
