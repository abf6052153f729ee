"""What every method shares: the step context and the interface the loop calls."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class StepContext:
    epoch: int
    step: int  # global optimiser step
    teacher_temp: float
    momentum: float  # EMA momentum of the teacher / key encoder


class Method(nn.Module):
    """Subclasses set ``self.student`` (an Encoder) and implement :meth:`loss`.

    ``loss`` returns (loss, dict of detached loss terms, student features of the first view
    the student sees, for the joint linear probe).
    """

    student: nn.Module

    def __init__(self, cfg, n_global: int, n_local: int):
        super().__init__()
        self.cfg, self.n_global, self.n_local = cfg, n_global, n_local

    @property
    def backbone(self) -> nn.Module:
        """The backbone that is evaluated and exported: the student's."""
        return self.student.backbone

    def trainable(self) -> list[nn.Module]:
        return [self.student]

    def loss(self, groups: list[torch.Tensor], ctx: StepContext):
        raise NotImplementedError

    def forward(self, groups: list[torch.Tensor], ctx: StepContext):
        """The loss is the forward pass, so DistributedDataParallel can wrap the whole method."""
        return self.loss(groups, ctx)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Drop gradients of parameters frozen at this point of the schedule."""

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """EMA updates and the like."""
