"""The CPU learning check: kNN top-1 at random initialisation, then after a short pre-training run.

Usage: python -m benchmarks.learning [--methods dino,swav,moco] [--model mnv2] [key=value ...]
Prints one markdown row per method; the runs land in ``runs/learning/<method>``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sslight.cli import main as cli_main
from sslight.metrics import read
from sslight.recipes import build_config
from sslight.sweep import SHORT  # the sweeps' short CIFAR-10 schedule, explained there
from sslight.train import build_method, evaluate, prepare, seed_everything


def knn_at_init(overrides: list[str]) -> float:
    cfg, keys = build_config(overrides)
    run = prepare(cfg, keys)
    seed_everything(cfg.train.seed)
    method = build_method(cfg, run.device)
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    return evaluate(run, method, None, dtype)["knn_top1"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="dino,swav,moco", help="comma-separated")
    p.add_argument("--model", default="mnv2")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    print("| method | model | kNN top-1 at init | kNN top-1 after | gain (points) | minutes |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for method in args.methods.split(","):
        overrides = [f"method={method}", f"model.name={args.model}", *SHORT, *args.overrides]
        before = knn_at_init(overrides)
        out = f"runs/learning/{method}"
        start = time.time()
        cli_main(["train", "--out", out, *overrides])
        minutes = (time.time() - start) / 60
        after = [r for r in read(Path(out) / "metrics.jsonl") if r["kind"] == "epoch"][-1]
        print(f"| {method} | {args.model} | {before:.1f} | {after['knn_top1']:.1f} | "
              f"{after['knn_top1'] - before:+.1f} | {minutes:.1f} |", flush=True)


if __name__ == "__main__":
    main()
