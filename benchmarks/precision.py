"""Seconds per training step of a backbone alone, fp32 against bf16 autocast, on this device.

Usage: python -m benchmarks.precision [--models r18 mnv2] [--batch 64] [--steps 10]
One step: forward + backward on 2 x batch globals at 32 px and 6 x batch locals at 18 px
(the CIFAR-10 SSLight views), small-input stem, channels_last.
"""

from __future__ import annotations

import argparse
import time

import torch

from sslight.models import build_backbone


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_step(model: torch.nn.Module, views: list[torch.Tensor], bf16: bool) -> None:
    """Forward and backward on each view group, from no gradients as a training step starts
    (else each backward would add into the last one's gradients, a step's worth more work)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(views[0].device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = sum(model(v).float().sum() for v in views)
    loss.backward()


def seconds_per_step(name: str, bf16: bool, batch: int, device: torch.device, steps: int) -> float:
    """Mean seconds of ``steps`` steps after a warm-up step, the device idle when the clock starts
    and when it stops."""
    model = build_backbone(name, True, 32).to(device, memory_format=torch.channels_last)
    views = [torch.randn(n * batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
             for n, size in ((2, 32), (6, 18))]
    training_step(model, views, bf16)  # warm-up: cuDNN's algorithm search, the allocator's first blocks
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        training_step(model, views, bf16)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["r18", "mnv2"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model and precision")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print("| backbone | fp32 s/step | bf16 autocast s/step |\n| --- | ---: | ---: |")
    for name in args.models:
        fp32 = seconds_per_step(name, False, args.batch, device, args.steps)
        bf16 = seconds_per_step(name, True, args.batch, device, args.steps)
        print(f"| {name} | {fp32:.2f} | {bf16:.2f} |", flush=True)


if __name__ == "__main__":
    main()
