"""Optimisers: LARS (foreach) for CNNs, AdamW for ViTs; parameter groups; the lr and weight decay
schedules."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from sslight.config import Config
from sslight.schedules import cosine


def each(factors: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``factors`` (one per tensor, on the tensors' device) as the list that multiplies each of
    ``tensors`` by its own factor in a foreach op, with no host sync. On CUDA the factors are
    spread over one buffer laid out like the tensors (:func:`spread`); a list of 0-d tensors
    would take the foreach ops' slow path, one kernel per tensor (ATen's ForeachUtils.h: the fast
    path needs equal sizes and strides in every list). On the CPU every foreach op loops over
    the tensors anyway: the 0-d factors, no buffer."""
    return spread(factors, tensors) if factors.is_cuda else list(factors.unbind())


def spread(factors: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of one buffer, the i-th of the size and strides of ``tensors[i]`` and filled with
    ``factors[i]``: a few kernels (repeat_interleave), and the foreach op they feed takes its fast
    path (multi-tensor kernels, each over many tensors). Every tensor is dense (gradients follow
    their parameter's layout), so its strides stay within its own numel."""
    numels = tuple(t.numel() for t in tensors)
    buffer = factors.repeat_interleave(_counts(numels, factors.device), output_size=sum(numels))
    starts = np.cumsum((0,) + numels[:-1]).tolist()
    return [buffer.as_strided(t.size(), t.stride(), start) for t, start in zip(tensors, starts)]


@functools.lru_cache(maxsize=16)
def _counts(numels: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``numels`` on ``device``, copied once per parameter list (a host-to-device copy syncs)."""
    return torch.tensor(numels, device=device)


def is_depthwise(p: torch.Tensor) -> bool:
    return p.ndim == 4 and p.shape[1] == 1  # a convolution with one input channel per filter


def param_groups(modules: list[nn.Module]) -> list[dict]:
    """Weights get weight decay and LARS adaptation; biases and norm parameters get neither; the
    weights of depthwise convolutions (MobileNetV2's) get LARS adaptation but no weight decay, as
    in SSLight (WD_FACTOR_FOR_DW 0, LARS_EXCLUDE_DW False). The depthwise group exists only where
    there are such weights."""
    regular, depthwise, flat = [], [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (flat if p.ndim <= 1 else depthwise if is_depthwise(p) else regular).append(p)
    groups = [dict(params=regular, regularized=True, adapt=True)]
    if depthwise:
        groups.append(dict(params=depthwise, regularized=False, adapt=True, weight_decay=0.0))
    return groups + [dict(params=flat, regularized=False, adapt=False, weight_decay=0.0)]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio ``eta * ||w|| / ||g + wd * w||`` (as in
    DINO/SwAV/SSLight) for the groups that ``adapt``, applied with foreach ops: a few kernels per
    step, not one per parameter."""

    def __init__(self, groups, lr: float, weight_decay: float, momentum: float, eta: float):
        super().__init__(groups, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["adapt"]:
                p_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm,
                                    torch.ones_like(p_norm))
                grads = torch._foreach_mul(grads, each(trust, grads))
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])


def build_optimizer(name: str, groups: list[dict], momentum: float, eta: float, device: torch.device):
    if name == "lars":
        return LARS(groups, lr=0.0, weight_decay=0.0, momentum=momentum, eta=eta)
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, fused=fused, foreach=None if fused else True)


def set_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group["regularized"]:
            group["weight_decay"] = weight_decay


def lr_wd_schedules(cfg: Config, steps_per_epoch: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step learning rate (linear scaling rule: base lr per 256 images of the global batch;
    warm-up from the absolute ``optim.warmup_start``; cosine to the absolute ``optim.min_lr``, as
    SSLight's trainer) and weight decay (cosine)."""
    o, total = cfg.optim, cfg.train.epochs * steps_per_epoch
    lr = o.lr * cfg.train.batch_size * world / 256
    return (cosine(lr, o.min_lr, total, int(o.warmup_epochs * steps_per_epoch), o.warmup_start),
            cosine(o.weight_decay, o.weight_decay_end, total))


@torch.no_grad()
def clip_per_parameter(params: list[torch.Tensor], max_norm: float) -> None:
    """Each parameter's gradient scaled down to norm ``max_norm`` where it is longer: DINO's (and
    SSLight's) ``clip_gradients``, ``clip / (norm + 1e-6)``, in a few foreach kernels."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads))
    torch._foreach_mul_(grads, each((max_norm / (norms + 1e-6)).clamp(max=1.0), grads))
