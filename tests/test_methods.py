"""What every method shares: its loss computed in fp32 whatever autocast the step runs under, and
the DINO head's initialisation (SSLight's and DINO's)."""

import copy
import math

import pytest
import torch
from torch import nn

from sslight.methods import METHODS, StepContext
from sslight.methods.heads import DinoHead, Encoder
from sslight.recipes import build_config
from tests.test_presets import TinyBackbone

N_GLOBAL, N_LOCAL, BATCH = 2, 2, 4


def method_on(name: str, device: str) -> nn.Module:
    cfg = build_config([f"method={name}", f"views.n_local={N_LOCAL}", f"train.batch_size={BATCH}",
                        "dino.out_dim=4096", "dino.hidden_dim=64", "dino.bottleneck_dim=32",
                        "swav.n_prototypes=512", "swav.queue_length=16", "swav.epoch_queue_starts=0",
                        "moco.queue_length=256"])
    torch.manual_seed(0)
    inputs = {}
    if METHODS[name].reads_teacher:  # RoB's teacher, here freshly made instead of read from files
        d = cfg.dino
        inputs["teacher"] = Encoder(TinyBackbone(), DinoHead(16, d.out_dim, d.hidden_dim, d.bottleneck_dim,
                                                             d.use_bn_in_head)).requires_grad_(False).eval()
    method = METHODS[name](cfg, TinyBackbone(), N_GLOBAL, N_LOCAL, **inputs).to(device)
    with torch.no_grad():  # state a run would have: a centre, and full queues in use
        for name_, buffer in method.named_buffers():
            if name_ in ("center", "queue"):
                buffer.normal_()
            if name_ == "queue_filled":
                buffer.fill_(10**6)
    return method


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", list(METHODS))
def test_the_loss_of_given_head_outputs_is_the_fp32_one_under_bf16_autocast(name, device):
    """Under autocast the pair loss's matmul (65,536 outputs wide for DINO's ViTs), MoCo's queue
    products and SwAV's prototype scores would run in bf16, despite their inputs' .float()."""
    method = method_on(name, device)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(N_GLOBAL * BATCH, 3, 8, 8, generator=g).to(device),
             torch.randn(N_LOCAL * BATCH, 3, 4, 4, generator=g).to(device)]
    ctx = StepContext(epoch=1, step=0, teacher_temp=0.04, momentum=0.99)
    _, outputs = method.outputs(views)  # the head outputs, in fp32
    fp32 = copy.deepcopy(method).loss_from(outputs, ctx)[0]  # copies: the loss moves centres and queues
    with torch.autocast(device, dtype=torch.bfloat16):
        under_bf16 = copy.deepcopy(method).loss_from(outputs, ctx)[0]
    assert under_bf16.dtype == torch.float32
    torch.testing.assert_close(under_bf16, fp32, rtol=1e-6, atol=1e-6)


def test_the_dino_heads_last_layer_starts_as_nn_linear_does():
    """SSLight and DINO build the last layer after their trunc_normal_(std=0.02) pass: its rows
    keep nn.Linear's init, norm 1/sqrt(3) at any width, not 0.02 * sqrt(width) (0.32 at 256)."""
    torch.manual_seed(0)
    head = DinoHead(64, 4096, 128, 256, bn=False)
    norms = head.last_layer.detach().norm(dim=1)
    linear = nn.Linear(256, 4096, bias=False).weight.detach().norm(dim=1)
    assert abs(norms.mean().item() - 1 / math.sqrt(3)) < 0.01
    assert abs(norms.mean().item() - linear.mean().item()) < 0.01
    assert abs(norms.std().item() - linear.std().item()) < 0.01
    mlp = [m.weight for m in head.mlp.modules() if isinstance(m, nn.Linear)]  # the trunc_normal_ pass stays
    assert all(abs(w.std().item() - 0.02) < 0.002 for w in mlp)
