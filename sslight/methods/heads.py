"""The heads the methods put on a backbone, and the Encoder that joins them."""

from __future__ import annotations

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
    """3-layer MLP, bottleneck, L2 norm, weight-normalised last layer (norm fixed to 1, as DINO)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, bn: bool):
        super().__init__()
        self.mlp = _mlp(in_dim, hidden, bottleneck, 3, bn)
        self.last_layer = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.trunc_normal_(self.last_layer, std=0.02)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer, dim=-1))


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
