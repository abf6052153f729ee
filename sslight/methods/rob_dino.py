"""RoB (Replace one Branch) with DINO: the student learns DINO's multi-crop loss against a frozen,
pre-trained teacher (sslight/teacher.py) instead of an EMA of itself."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from sslight.methods.base import StepContext
from sslight.methods.dino import Dino
from sslight.teacher import load_teacher


class RobDino(Dino):
    def build_teacher(self) -> nn.Module:
        return load_teacher(self.cfg)

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
