"""The training side on CUDA (marked ``gpu``: skipped without CUDA, run by scripts/gpu_check.sh):
resume, RNG states through a checkpoint mapped to the GPU, LARS and clipping in a few kernels
without a host sync."""

import pytest
import torch
from torch import nn

from sslight import checkpoint
from sslight.train.optim import LARS, clip_per_parameter, param_groups, set_schedule
from sslight.train.state import restore_rng, rng_state
from tests.test_train import assert_resume_equals_uninterrupted

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_rng_states_survive_a_checkpoint_mapped_to_the_gpu(tmp_path):
    """checkpoint.load maps every tensor to the training device; torch.set_rng_state took the CPU
    state, now on the GPU, and raised. The CUDA generator's state is saved and restored too."""
    torch.rand(1, device=CUDA)  # CUDA initialised, its generator in use
    checkpoint.save_atomic(dict(rng=rng_state(CUDA)), tmp_path / "rng.pt")
    expected = torch.rand(4), torch.rand(4, device=CUDA)
    torch.rand(4), torch.rand(4, device=CUDA)  # move both generators on
    saved = checkpoint.load(tmp_path / "rng.pt", CUDA)["rng"]
    assert saved["torch"].device.type == "cuda" and saved["cuda"].device.type == "cuda"
    restore_rng(saved, CUDA)
    torch.testing.assert_close((torch.rand(4), torch.rand(4, device=CUDA)), expected, rtol=0, atol=0)


def test_resume_on_cuda_equals_uninterrupted(cifar_small, tmp_path, monkeypatch):
    """The CPU test's runs (tests/test_train.py) on CUDA, with a ViT whose drop path draws from the
    CUDA generator; fp32 and eager, deterministic convolutions, so the runs can agree closely."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    common = ["--data", str(cifar_small), "--method", "dino", "--model", "vit_t16", "--loader", "pil",
              "--epochs", "2", "--batch", "32", "--seed", "3", "eval.every=0", "train.device=cuda",
              "train.precision=fp32", "train.compile=false", "model.drop_path_rate=0.1"]
    assert_resume_equals_uninterrupted(tmp_path, common, 1e-4)  # ViT's position-embedding backward: atomics


def many_parameters(blocks: int) -> nn.Module:
    """6 parameters a block, of mixed shapes, the convolutions channels-last as in training."""
    layers = [m for _ in range(blocks) for m in (nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Linear(6, 6))]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)


def with_gradients(model: nn.Module) -> tuple[list[torch.Tensor], LARS]:
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * (1 + 10 * torch.rand(()))
    optimizer = LARS(param_groups([model]), lr=0.0, weight_decay=0.0, momentum=0.9, eta=0.02)
    set_schedule(optimizer, lr=0.5, weight_decay=1e-4)
    return list(model.parameters()), optimizer


def step(params: list[torch.Tensor], optimizer: LARS) -> None:
    clip_per_parameter(params, 3.0)
    optimizer.step()


def cuda_kernels(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def test_clipping_and_lars_on_cuda_equal_the_cpu():
    torch.manual_seed(0)
    cpu_model = many_parameters(10)
    cuda_model = many_parameters(10).to(CUDA)
    cuda_model.load_state_dict(cpu_model.state_dict())
    (cpu_params, cpu_opt), (cuda_params, cuda_opt) = with_gradients(cpu_model), with_gradients(cuda_model)
    for p, q in zip(cpu_params, cuda_params):
        q.grad = p.grad.to(CUDA)
    for _ in range(2):
        step(cpu_params, cpu_opt)
        step(cuda_params, cuda_opt)
    for p, q in zip(cpu_params, cuda_params):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=1e-5, atol=1e-6)


def test_clipping_and_lars_kernels_do_not_grow_with_the_parameters_nor_sync():
    """torch's foreach multiply by a list of 0-d tensors takes its slow path, one kernel per
    parameter; the factors spread over one buffer keep it on the multi-tensor path."""
    counts = {}
    for blocks in (10, 20):
        params, optimizer = with_gradients(many_parameters(blocks).to(CUDA))
        step(params, optimizer)  # the first step makes the momentum buffers, copies the element counts
        torch.cuda.set_sync_debug_mode("error")  # any host sync raises
        try:
            counts[blocks] = cuda_kernels(lambda: clip_per_parameter(params, 3.0)), cuda_kernels(optimizer.step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # 60 more parameters, 20 more that LARS adapts: one kernel each before
    assert counts[20][0] - counts[10][0] < 10, counts
    assert counts[20][1] - counts[10][1] < 10, counts
