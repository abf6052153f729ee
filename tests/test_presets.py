"""What the paper's presets switch on, doing what it should: SwAV's queue from its start epoch,
the ViT head's trained last-layer gain, stochastic depth in the student only."""

import copy

import pytest
import torch
from torch import nn

from sslight.methods import StepContext
from sslight.methods.dino import Dino
from sslight.methods.swav import Swav
from sslight.models import build_backbone
from sslight.recipes import build_config
from sslight.train.optim import LARS, param_groups, set_schedule


class TinyBackbone(nn.Module):
    """A backbone as the methods see one: images in, ``num_features`` out."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 16))

    def forward(self, x):
        return self.net(x)


def views(batch, n_local=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2 * batch, 3, 8, 8, generator=g), torch.randn(n_local * batch, 3, 4, 4, generator=g)]


def test_swav_queue_has_sslights_length_fills_and_is_used_from_its_start_epoch():
    # a small head (the queue's length does not depend on it): Sinkhorn over 3000 prototypes and
    # the whole queue, 120 times, took minutes on a CPU
    small_head = ["swav.hidden_dim=32", "swav.out_dim=16", "swav.n_prototypes=32"]
    cfg = build_config(["method=swav", "views.n_local=2", "train.batch_size=64", *small_head])
    assert (cfg.swav.queue_length, cfg.swav.epoch_queue_starts) == (3840, 15)
    torch.manual_seed(0)
    swav = Swav(cfg, TinyBackbone(), 2, 2)
    assert swav.queue_length == 3840  # a multiple of the global batch of 64
    big = build_config(["method=swav", "views.n_local=2", "train.batch_size=1024", *small_head])
    assert Swav(big, TinyBackbone(), 2, 2).queue_length == 3072  # SSLight's 3840 at 8 GPUs x 128
    without = copy.deepcopy(swav)
    without.queue_length = 0
    before = StepContext(epoch=14, step=0)
    with torch.no_grad():
        loss, _, _ = swav.loss(views(64), before)
        assert int(swav.queue_filled) == 0  # before its start epoch the queue is left alone
        for step in range(60):  # 60 batches of 64 fill it
            swav.loss(views(64, seed=step), StepContext(epoch=15, step=step))
        assert int(swav.queue_filled) == 3840 and swav.queue.abs().sum() > 0
        used = swav.loss(views(64, seed=99), StepContext(epoch=15, step=60))[0]
        alone = without.loss(views(64, seed=99), StepContext(epoch=15, step=60))[0]
    assert not torch.isclose(used, alone)  # the queued embeddings join the assignments


def dino(model: str, size: int = 32):
    cfg = build_config([f"model.name={model}", "views.n_local=2", "dino.out_dim=64", "dino.hidden_dim=32",
                        "dino.bottleneck_dim=16", f"views.global_size={size}", "views.local_size=16"])
    torch.manual_seed(0)
    backbone = build_backbone(model, cfg.model.small_stem, size, cfg.model.drop_path_rate)
    return cfg, Dino(cfg, backbone, 2, 2)


@pytest.mark.parametrize("model, trained", [("vit_t16", True), ("r18", False)])
def test_the_last_layer_gain_is_trained_for_vits_only(model, trained):
    cfg, method = dino(model)
    gain = method.student.head.last_layer_gain
    assert (gain is not None) == trained == (not cfg.dino.norm_last_layer)
    if not trained:
        return
    assert any(p is gain for group in param_groups(method.trainable()) for p in group["params"])
    optimizer = LARS(param_groups(method.trainable()), lr=0, weight_decay=0, momentum=0.9, eta=0.02)
    for epoch in (0, 1):  # frozen in epoch 0 (dino.freeze_last_layer=1), trained after
        before = gain.detach().clone()
        ctx = StepContext(epoch=epoch, step=epoch, teacher_temp=0.04, momentum=0.996)
        loss, _, _ = method.loss([v.repeat(1, 1, 4, 4) for v in views(4)], ctx)
        optimizer.zero_grad()
        loss.backward()
        method.before_optimizer_step(ctx)
        set_schedule(optimizer, 0.5, 0.0)
        optimizer.step()
        assert torch.equal(gain, before) == (epoch == 0)


def test_drop_path_is_active_in_the_student_only():
    cfg, method = dino("vit_t16")
    assert cfg.model.drop_path_rate == 0.1
    method.train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        student = [method.student.backbone(x) for _ in range(2)]
        teacher = [method.teacher.backbone(x) for _ in range(2)]
    assert not torch.allclose(student[0], student[1])  # random depth, step to step
    assert torch.equal(teacher[0], teacher[1])  # the EMA teacher runs its whole depth
    cnn, _ = dino("r18")
    assert cnn.model.drop_path_rate == 0.0
