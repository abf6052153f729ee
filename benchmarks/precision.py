"""Seconds per training step of a backbone alone, fp32 against bf16 autocast, on this device.

Usage: python -m benchmarks.precision [--models r18 mnv2] [--batch 64]
One step: forward + backward on 2 x batch globals at 32 px and 6 x batch locals at 18 px
(the CIFAR-10 SSLight views), small-input stem, channels_last.
"""

from __future__ import annotations

import argparse
import time

import torch

from sslight.models import build_backbone


def seconds_per_step(name: str, bf16: bool, batch: int, device: torch.device, steps: int = 2) -> float:
    model = build_backbone(name, True, 32).to(device, memory_format=torch.channels_last)
    globals_ = torch.randn(2 * batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    locals_ = torch.randn(6 * batch, 3, 18, 18, device=device).contiguous(memory_format=torch.channels_last)
    for i in range(steps + 1):
        if i == 1:  # the first step warms up
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(globals_).float().sum() + model(locals_).float().sum()
        loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["r18", "mnv2"])
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print("| backbone | fp32 s/step | bf16 autocast s/step |\n| --- | ---: | ---: |")
    for name in args.models:
        fp32 = seconds_per_step(name, False, args.batch, device)
        bf16 = seconds_per_step(name, True, args.batch, device)
        print(f"| {name} | {fp32:.2f} | {bf16:.2f} |", flush=True)


if __name__ == "__main__":
    main()
