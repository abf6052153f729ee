"""The joint linear probe: a classifier on the detached backbone feature of the student's first
view, trained alongside pre-training with its own SGD, and reported each epoch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslight import distributed
from sslight.precision import autocast


class JointProbe:
    def __init__(self, dim: int, n_classes: int, lr: float, device: torch.device, dist: distributed.Dist,
                 dtype: torch.dtype):
        self.linear = nn.Linear(dim, n_classes).to(device)
        self.model = distributed.wrap(self.linear, dist)  # gradients averaged over ranks
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=lr, momentum=0.9)
        self.device, self.dtype = device, dtype
        self.start_epoch()

    def start_epoch(self) -> None:
        self.correct = torch.zeros((), device=self.device)
        self.seen = 0

    def step(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast(self.device, self.dtype):
            logits = self.model(feats.detach())
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(logits.float(), labels).backward()
        self.optimizer.step()
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += labels.shape[0]

    def train_top1(self) -> float | None:
        """Top-1 (%) on the epoch's training batches of every rank; None before any batch."""
        if not self.seen:
            return None
        seen = distributed.sum_across_ranks(torch.tensor(self.seen, device=self.device)).item()
        return 100 * distributed.sum_across_ranks(self.correct).item() / seen

    @torch.no_grad()
    def top1(self, feats: torch.Tensor, labels: torch.Tensor) -> float:
        return 100 * (self.linear(feats).argmax(1) == labels).float().mean().item()

    def state_dict(self) -> dict:
        return dict(probe=self.linear.state_dict(), probe_opt=self.optimizer.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.linear.load_state_dict(state["probe"])
        self.optimizer.load_state_dict(state["probe_opt"])
