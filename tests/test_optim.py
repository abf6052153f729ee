"""LARS (foreach) against a per-parameter reference; EMA; schedules."""

import numpy as np
import pytest
import torch

from sslight.methods.base import ema_update
from sslight.train.optim import LARS, param_groups, set_schedule
from sslight.schedules import cosine, linear_then_constant


def reference_lars_step(params, bufs, lr, wd, momentum, eta):
    """DINO's LARS, one parameter at a time."""
    for p, buf in zip(params, bufs):
        dp = p.grad.clone()
        if p.ndim > 1:
            dp = dp + wd * p
            p_norm, d_norm = torch.norm(p), torch.norm(dp)
            q = torch.where((p_norm > 0) & (d_norm > 0), eta * p_norm / d_norm, torch.ones(()))
            dp = dp * q
        buf.mul_(momentum).add_(dp)
        p.data.add_(buf, alpha=-lr)


@pytest.fixture(params=["cpu", "cuda"])
def factors_as(request, monkeypatch):
    """Per-parameter factors as each device takes them: 0-d tensors on the CPU, views of one
    spread buffer on CUDA (that branch run here on CPU tensors)."""
    from sslight.train import optim

    if request.param == "cuda":
        monkeypatch.setattr(optim, "each", optim.spread)
    return request.param


def test_lars_matches_reference(factors_as):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 3))
    ref = [p.detach().clone() for p in model.parameters()]
    bufs = [torch.zeros_like(p) for p in ref]
    opt = LARS(param_groups([model]), lr=0.0, weight_decay=0.0, momentum=0.9, eta=0.001)
    for step in range(3):
        x = torch.randn(8, 5)
        model.zero_grad()
        model(x).pow(2).sum().backward()
        ref_params = [r.requires_grad_(False) for r in ref]
        for r, p in zip(ref_params, model.parameters()):
            r.grad = p.grad.clone()
        set_schedule(opt, lr=0.5, weight_decay=1e-2)
        opt.step()
        reference_lars_step(ref_params, bufs, 0.5, 1e-2, 0.9, 0.001)
        for r, p in zip(ref_params, model.parameters()):
            torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6)
            ref = [q.detach().clone() for q in model.parameters()]


def test_param_groups_exclude_flat_params_from_decay():
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7))
    regular, flat = param_groups([model])
    assert [p.ndim for p in regular["params"]] == [2] and all(p.ndim == 1 for p in flat["params"])
    assert flat["weight_decay"] == 0.0 and not flat["regularized"]


def test_ema_update():
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    expected = [0.9 * p.detach() + 0.1 * q.detach() for p, q in zip(a.parameters(), b.parameters())]
    ema_update(a, b, 0.9)
    for p, e in zip(a.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def test_schedules():
    lr = cosine(1.0, 0.0, 100, warmup_steps=10)
    assert len(lr) == 100 and lr[0] == 0.0 and np.isclose(lr[10], 1.0) and lr[-1] < 1e-3
    assert np.all(np.diff(lr[:10]) > 0) and np.all(np.diff(lr[10:]) <= 0)
    t = linear_then_constant(0.04, 0.07, 50, 20)
    assert np.isclose(t[0], 0.04) and np.isclose(t[19], 0.07) and np.all(t[20:] == 0.07)


def dino_clip_gradients(model, clip):
    """DINO's utils.clip_gradients (SSLight's too), one parameter at a time."""
    for p in model.parameters():
        if p.grad is not None:
            clip_coef = clip / (p.grad.data.norm(2) + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


def test_per_parameter_clipping_equals_dinos_clip_gradients(factors_as):
    from sslight.train.optim import clip_per_parameter

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 3))
    model(torch.randn(8, 5)).pow(2).sum().mul(50).backward()
    reference = __import__("copy").deepcopy(model)
    for p, q in zip(model.parameters(), reference.parameters()):
        q.grad = p.grad.clone()
    norms = [p.grad.norm().item() for p in model.parameters()]
    clip = sorted(norms)[len(norms) // 2]  # some gradients longer, some shorter
    clip_per_parameter(list(model.parameters()), clip)
    dino_clip_gradients(reference, clip)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)
    assert any(n > clip for n in norms) and any(n < clip for n in norms)


def test_depthwise_weights_adapt_but_do_not_decay():
    conv = torch.nn.Conv2d(4, 4, 3, groups=4)  # depthwise: one input channel per filter
    groups = param_groups([torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), conv)])
    depthwise = next(g for g in groups if any(p is conv.weight for p in g["params"]))
    assert depthwise["adapt"] and not depthwise["regularized"] and depthwise["weight_decay"] == 0.0
    opt = LARS(groups, lr=0.0, weight_decay=0.0, momentum=0.9, eta=0.001)
    set_schedule(opt, lr=0.1, weight_decay=0.5)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0, 0.0]


def test_warmup_reaches_base_at_its_last_step_from_its_start():
    lr = cosine(1.2, 0.0048, 100, warmup_steps=10, warmup_start=0.075)
    assert lr[0] == 0.075 and lr[9] == 1.2 and lr[10] == 1.2 and np.isclose(lr[-1], 0.0048, atol=1e-3)


def test_spread_factors_are_laid_out_like_their_tensors_and_multiply_alike():
    """The foreach fast path (one multi-tensor kernel on CUDA) needs equal sizes and strides in
    both lists; a channels-last convolution weight keeps its strides."""
    from sslight.train.optim import spread

    torch.manual_seed(0)
    tensors = [torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last), torch.randn(5, 7),
               torch.randn(7), torch.randn(1, 1, 3, 3), torch.randn(2, 3).t()]
    factors = torch.rand(len(tensors))
    views = spread(factors, tensors)
    for t, v, f in zip(tensors, views, factors):
        assert (v.size(), v.stride()) == (t.size(), t.stride())
        assert torch.all(v == f)
    expected = torch._foreach_mul(tensors, list(factors.unbind()))
    for got, want in zip(torch._foreach_mul(tensors, views), expected):
        assert torch.equal(got, want)
