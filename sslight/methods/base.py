"""What every method shares: the step context, the interface the loop calls, and the EMA update."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import numpy as np
import torch
from timm.layers import DropPath
from torch import nn

from sslight.augment import ViewPhotometry
from sslight.precision import full_precision

# DINO's and MoCo-v2's photometry (docs/design.md, section 1): blur always on global 1, rarely on
# global 2, which alone is solarized; locals half the time.
JITTER = (0.4, 0.4, 0.2, 0.1)
FIRST_GLOBAL = ViewPhotometry(JITTER, 0.8, 0.2, 1.0, 0.0)
SECOND_GLOBAL = ViewPhotometry(JITTER, 0.8, 0.2, 0.1, 0.2)
LOCAL = ViewPhotometry(JITTER, 0.8, 0.2, 0.5, 0.0)


@dataclass
class StepContext:
    """Where the run is, and the values of the method's own schedules at this step
    (:meth:`Method.schedules`); a method reads only the fields it schedules."""

    epoch: int
    step: int  # global optimiser step
    teacher_temp: float = 0.0
    momentum: float = 1.0  # EMA momentum of the teacher / key encoder


class Method(nn.Module):
    """Subclasses set ``self.student`` (an Encoder) and implement :meth:`outputs` (the forward
    passes, under the run's autocast) and :meth:`objective` (the loss from their outputs, always
    in fp32: DESIGN.md section 5).
    """

    student: nn.Module
    reads_teacher = False  # whether teacher.path names a file this method reads (RoB)
    # The effective-rank fraction of the student's features below which the live log warns of
    # collapse: learning DINO and MoCo-v2 runs stay at 0.33 or more, collapsing ones fall to 0.1.
    collapse_rank_warning = 0.2

    def __init__(self, cfg, n_global: int, n_local: int):
        super().__init__()
        self.cfg, self.n_global, self.n_local = cfg, n_global, n_local

    @classmethod
    def photometry(cls, n_global: int, n_local: int) -> list[ViewPhotometry]:
        """Per-view photometric settings in view order (globals, then locals)."""
        globals_ = [FIRST_GLOBAL, SECOND_GLOBAL] + [LOCAL] * max(0, n_global - 2)
        return globals_[:n_global] + [LOCAL] * n_local

    @classmethod
    def schedules(cls, cfg, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """Per-step values of the method's own schedules, keyed by :class:`StepContext` field."""
        return {}

    @classmethod
    def inputs(cls, cfg) -> dict:
        """What the method reads from files, loaded and checked before a run writes anything:
        keyword arguments of its constructor."""
        return {}

    @property
    def backbone(self) -> nn.Module:
        """The backbone that is evaluated and exported: the student's."""
        return self.student.backbone

    def trainable(self) -> list[nn.Module]:
        return [self.student]

    def outputs(self, groups: list[torch.Tensor]) -> tuple[torch.Tensor, tuple]:
        """(student features of the first view the student sees, for the joint linear probe;
        the head outputs that :meth:`objective` takes)."""
        raise NotImplementedError

    def objective(self, *outputs: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """(loss, dict of detached loss terms) from the head outputs; runs with autocast off."""
        raise NotImplementedError

    def loss(self, groups: list[torch.Tensor], ctx: StepContext):
        """(loss, dict of detached loss terms, student features for the probe): the forward passes
        under the caller's autocast, then :meth:`loss_from` their outputs."""
        feats, outputs = self.outputs(groups)
        return (*self.loss_from(outputs, ctx), feats)

    def loss_from(self, outputs: tuple, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """:meth:`objective` with autocast off, whatever the caller has in force."""
        with full_precision(outputs[0].device):
            return self.objective(*outputs, ctx=ctx)

    def forward(self, groups: list[torch.Tensor], ctx: StepContext):
        """The loss is the forward pass, so DistributedDataParallel can wrap the whole method."""
        return self.loss(groups, ctx)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Drop gradients of parameters frozen at this point of the schedule."""

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """EMA updates and the like."""


def ema_copy(encoder: nn.Module) -> nn.Module:
    """A frozen copy of ``encoder`` to follow it by EMA (DINO's teacher, MoCo's key encoder): no
    gradients, and no stochastic depth, which only the student trains with."""
    frozen = deepcopy(encoder).requires_grad_(False)
    for module in frozen.modules():
        if isinstance(module, DropPath):
            module.drop_prob = 0.0
    return frozen


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target = momentum * target + (1 - momentum) * source, over all parameters at once."""
    t = list(target.parameters())
    s = list(source.parameters())
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1 - momentum)
