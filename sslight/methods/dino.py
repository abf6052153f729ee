"""DINO: a student matches an EMA teacher's centred, sharpened outputs across views."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslight import distributed
from sslight.methods.base import Method, StepContext, ema_copy, ema_update
from sslight.methods.heads import DinoHead, Encoder
from sslight.methods.pair_loss import cross_entropy_pairs, pair_loss_terms, pair_weights, weighted_pair_loss
from sslight.schedules import cosine, linear_then_constant


class Dino(Method):
    def __init__(self, cfg, backbone, n_global: int, n_local: int, teacher: nn.Module | None = None):
        """``teacher``: the branch the student learns against; by default (DINO) a copy of the
        student that then follows it by EMA."""
        super().__init__(cfg, n_global, n_local)
        d = cfg.dino
        head = DinoHead(backbone.num_features, d.out_dim, d.hidden_dim, d.bottleneck_dim, d.use_bn_in_head,
                        d.norm_last_layer)
        self.student = Encoder(backbone, head)
        self.teacher = teacher if teacher is not None else ema_copy(self.student)
        self.register_buffer("center", torch.zeros(1, d.out_dim))
        views = n_global + n_local
        self.register_buffer("weights", pair_weights(list(range(n_global)), list(range(views)), n_global,
                                                     cfg.loss.alpha), persistent=False)

    @classmethod
    def schedules(cls, cfg, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        d = cfg.dino
        return dict(momentum=cosine(d.momentum_teacher, 1.0, total_steps),
                    teacher_temp=linear_then_constant(d.warmup_teacher_temp, d.teacher_temp, total_steps,
                                                      d.warmup_teacher_temp_epochs * steps_per_epoch))

    @torch.no_grad()
    def teacher_outputs(self, globals_: torch.Tensor) -> torch.Tensor:
        return self.teacher([globals_])[1]

    def outputs(self, groups):
        batch = groups[0].shape[0] // self.n_global
        feats, student_out = self.student(groups)
        return feats[:batch], (student_out, self.teacher_outputs(groups[0]))  # the teacher sees the globals only

    def objective(self, student_out, teacher_out, ctx: StepContext):
        d = self.cfg.dino
        batch = teacher_out.shape[0] // self.n_global
        log_probs = F.log_softmax(student_out.float() / d.student_temp, -1).view(-1, batch, d.out_dim)
        teacher_out = teacher_out.float()
        targets = F.softmax((teacher_out - self.center) / ctx.teacher_temp, -1).view(self.n_global, batch, -1)
        pairs = cross_entropy_pairs(targets, log_probs)
        self.update_center(teacher_out)
        return weighted_pair_loss(pairs, self.weights), pair_loss_terms(pairs, self.weights, self.n_global)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        m = self.cfg.dino.center_momentum
        # the mean over the global batch (equal batches per rank), so the centre stays equal on every rank
        batch_center = distributed.mean_across_ranks(teacher_out.mean(0, keepdim=True))
        self.center.mul_(m).add_(batch_center, alpha=1 - m)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        if ctx.epoch < self.cfg.dino.freeze_last_layer:  # DINO: every last-layer parameter, the gain too
            self.student.head.last_layer.grad = None
            if self.student.head.last_layer_gain is not None:
                self.student.head.last_layer_gain.grad = None

    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update(self.teacher, self.student, ctx.momentum)
