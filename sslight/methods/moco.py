"""MoCo-v2 with multi-crop: queries from global 2 and the locals against the key of global 1."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sslight import distributed
from sslight.methods.base import Method, StepContext, ema_copy, ema_update
from sslight.methods.heads import Encoder, ProjectionHead
from sslight.methods.pair_loss import pair_loss_terms, pair_weights, weighted_pair_loss


class Moco(Method):
    def __init__(self, cfg, backbone, n_global: int, n_local: int):
        super().__init__(cfg, n_global, n_local)
        m = cfg.moco
        self.student = Encoder(backbone, ProjectionHead(backbone.num_features, m.hidden_dim, m.out_dim, bn=False))
        self.key_encoder = ema_copy(self.student)
        self.register_buffer("queue", F.normalize(torch.randn(m.queue_length, m.out_dim), dim=1))
        views = n_global + n_local
        # the key is view 0; queries are every other view (P_gg = n_global - 1, P_gl = n_local)
        self.register_buffer("weights", pair_weights([0], list(range(1, views)), n_global, cfg.loss.alpha),
                             persistent=False)

    @classmethod
    def schedules(cls, cfg, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        return dict(momentum=np.full(total_steps, cfg.moco.momentum))

    def outputs(self, groups):
        batch = groups[0].shape[0] // self.n_global
        feats, queries = self.student([groups[0][batch:], *groups[1:]])
        with torch.no_grad():
            _, keys = self.key_encoder([groups[0][:batch]])
        return feats[:batch], (queries, keys)

    def objective(self, queries, keys, ctx: StepContext):
        m = self.cfg.moco
        batch = keys.shape[0]
        queries = queries.float().view(-1, batch, m.out_dim)
        keys = keys.float()
        positive = torch.einsum("sbd,bd->sb", queries, keys).unsqueeze(-1)
        negative = queries @ self.queue.T
        logits = torch.cat([positive, negative], -1) / m.temperature
        # InfoNCE per (key view, query view) pair: the positive sits at index 0
        per_pair = -F.log_softmax(logits, -1)[..., 0].mean(1).unsqueeze(0)
        self.enqueue(distributed.gather_across_ranks(keys))  # every rank's keys: one queue, equal on all ranks
        return weighted_pair_loss(per_pair, self.weights), pair_loss_terms(per_pair, self.weights, self.n_global - 1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        if len(self.queue):
            n = min(keys.shape[0], len(self.queue))
            # a new tensor, not in place: the old queue is still needed for this step's backward
            self.queue = torch.cat([keys[:n], self.queue[:-n]])

    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update(self.key_encoder, self.student, ctx.momentum)
