"""The linear probe: a classifier on frozen features (BN without affine, then linear, as MAE's).

Training reads features through ``feature_of(indices)``, so the same loop runs on cached
features (an index into a tensor) and on features computed from images on the fly.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sslight.config import LinearConfig
from sslight.eval.sgd import fit
from sslight.schedules import cosine


def train_linear(feature_of: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor, dim: int,
                 n_classes: int, cfg: LinearConfig, seed: int) -> nn.Module:
    """A classifier trained by SGD (momentum 0.9, cosine lr) on ``len(labels)`` samples."""
    device = labels.device
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, n_classes)).to(device)
    nn.init.zeros_(head[1].weight)  # a convex problem: a fixed start keeps runs comparable
    nn.init.zeros_(head[1].bias)
    n = len(labels)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = n // batch  # full batches only: batch norm needs more than one sample
    lr = cfg.lr * batch / 256
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)

    def batches():
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=generator).to(device)
            for i in range(steps_per_epoch):
                idx = order[i * batch:(i + 1) * batch]
                yield feature_of(idx), labels[idx]

    fit(opt, cosine(lr, 0.0, cfg.epochs * steps_per_epoch), batches(), head)
    return head.eval()


@torch.no_grad()
def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, float]:
    """Top-k accuracy (%) for each k (capped at the number of classes)."""
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = ranked == labels[:, None]
    return {k: 100.0 * hit[:, :k].any(1).float().mean().item() for k in ks}
