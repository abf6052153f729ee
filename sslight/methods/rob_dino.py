"""RoB (Replace one Branch) with DINO: the student learns DINO's multi-crop loss against a frozen,
pre-trained teacher (sslight/methods/rob_teacher.py) instead of an EMA of itself."""

from __future__ import annotations

import contextlib

import torch

from sslight.methods import rob_teacher
from sslight.methods.base import StepContext
from sslight.methods.dino import Dino


class RobDino(Dino):
    reads_teacher = True

    @classmethod
    def inputs(cls, cfg) -> dict:
        return dict(teacher=rob_teacher.load_teacher(cfg))

    @torch.no_grad()
    def teacher_outputs(self, globals_: torch.Tensor) -> torch.Tensor:
        # bf16 on CUDA whatever the student's precision; elsewhere the run's own autocast (if any)
        # stays in force, as a disabled inner autocast would switch it off
        cuda = globals_.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            return super().teacher_outputs(globals_)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: its BatchNorm keeps the pre-trained running statistics
        return self

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """No EMA: the teacher stays as it was loaded."""
