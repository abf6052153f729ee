"""The heads the methods put on a backbone, and the Encoder that joins them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int, bn: bool, act=nn.GELU) -> nn.Sequential:
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden)] + ([nn.BatchNorm1d(hidden)] if bn else []) + [act()]
        dim = hidden
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


class DinoHead(nn.Module):
    """3-layer MLP, bottleneck, L2 norm, weight-normalised last layer: each output's weight vector
    ``last_layer`` normalised, times its gain, which is fixed at 1 with ``norm_last_layer`` (DINO's
    default, SSLight's CNNs) and trained from 1 without it (``last_layer_gain``; SSLight's ViTs),
    as DINO's ``weight_norm`` with its ``weight_g`` frozen or not."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, bn: bool,
                 norm_last_layer: bool = True):
        super().__init__()
        self.mlp = _mlp(in_dim, hidden, bottleneck, 3, bn)
        self.last_layer = nn.Parameter(torch.empty(out_dim, bottleneck))
        self.last_layer_gain = None if norm_last_layer else nn.Parameter(torch.ones(out_dim, 1))
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # nn.Linear's own init, as in DINO and SSLight, whose last layer is built after their
        # trunc_normal_ pass: rows of norm 1/sqrt(3) whatever the width (std 0.02 would give
        # 0.02 * sqrt(bottleneck)). The forward normalises the rows, but the gradient on them
        # scales with 1 / norm, so the norm sets the step size wherever the optimiser is not
        # scale-invariant (AdamW).
        nn.init.kaiming_uniform_(self.last_layer, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        weight = F.normalize(self.last_layer, dim=-1)
        return F.linear(x, weight if self.last_layer_gain is None else self.last_layer_gain * weight)


class ProjectionHead(nn.Module):
    """Linear - [BN] - ReLU - Linear, then L2 norm (SwAV, MoCo-v2)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, bn: bool):
        super().__init__()
        self.mlp = _mlp(in_dim, hidden, out_dim, 2, bn, act=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)


class Encoder(nn.Module):
    """Backbone + head; one forward per resolution group keeps compiled shapes static."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (features, head outputs) for all views, in view order."""
        feats = torch.cat([self.backbone(x) for x in groups])
        return feats, self.head(feats)
