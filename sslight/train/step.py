"""One optimiser step, and what it reads per step: the schedules and the seeded augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from loaders import Batch
from sslight.augment import Photometric
from sslight.methods import Method, StepContext
from sslight.precision import autocast
from sslight.train.faults import NonFiniteGuard
from sslight.train.log import CollapseMonitor
from sslight.train.optim import clip_per_parameter, set_schedule
from sslight.train.probe import JointProbe


def step_seed(seed: int, step: int) -> int:
    """The photometric RNG seed of one step, so a resumed run draws the same augmentations."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seeded_augment(photometric: Photometric, seed: int, device: torch.device) -> Callable:
    """(batch, step) -> the batch's views, augmented with draws keyed on (seed, step)."""
    generator = torch.Generator(device=device)

    def augment(batch: Batch, step: int) -> list[torch.Tensor]:
        generator.manual_seed(step_seed(seed, step))
        return photometric.batch(batch.views, generator)

    return augment


@dataclass
class Schedules:
    """Per-step values, precomputed once (as in DINO): the optimiser's and the method's own."""

    lr: np.ndarray
    weight_decay: np.ndarray
    method: dict[str, np.ndarray]

    def context(self, epoch: int, step: int) -> StepContext:
        return StepContext(epoch, step, **{name: float(values[step]) for name, values in self.method.items()})


@dataclass
class Step:
    method: Method
    model: nn.Module  # the method, wrapped in DistributedDataParallel when there are several ranks
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    augment: Callable  # (batch, step) -> views
    guard: NonFiniteGuard
    probe: JointProbe | None
    clip_grad: float
    dtype: torch.dtype
    monitor: CollapseMonitor

    def __call__(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor | None, str | None]:
        """Photometric augmentation, forward, non-finite guard, backward, update, probe.
        Returns (the detached loss, None), or (None, a warning) when the guard skipped the update."""
        set_schedule(self.optimizer, float(self.schedules.lr[ctx.step]),
                     float(self.schedules.weight_decay[ctx.step]))
        views = self.augment(batch, ctx.step)
        snapshot = self.guard.snapshot(self.method)
        with autocast(views[0].device, self.dtype):
            loss, terms, feats = self.model(views, ctx)
        self.guard.record(ctx.step + 1, loss, terms)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        skipped = self.guard.check(ctx.epoch) if self.guard.per_step else None
        if skipped:
            self.guard.restore(self.method, snapshot)
            return None, skipped
        if self.clip_grad:
            clip_per_parameter([p for m in self.method.trainable() for p in m.parameters()], self.clip_grad)
        self.method.before_optimizer_step(ctx)
        self.optimizer.step()
        self.method.after_optimizer_step(ctx)
        if self.probe is not None:
            self.probe.step(feats, batch.labels)
        self.monitor.keep(feats)
        return loss.detach(), None
