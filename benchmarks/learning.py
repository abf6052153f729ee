"""The CPU learning check: kNN top-1 at random initialisation, then after a short pre-training run.

Usage: python -m benchmarks.learning [--methods dino,swav,moco] [--model mnv2] [key=value ...]
Prints one markdown row per method; the runs land in ``runs/learning/<method>``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sslight.cli import main as cli_main
from sslight.eval.knn import knn_evaluation
from sslight.recipes import SHORT  # the short CIFAR-10 schedule, explained there
from sslight.train.log import read
from sslight.train.loop import build_method, prepare, seed_everything


def knn_at_init(overrides: list[str]) -> float:
    """kNN top-1 of the run's backbone as training would initialise it (same seed). Prepared only
    to build it: nothing is written, so whatever its folder holds may stay (train.overwrite)."""
    run = prepare([*overrides, "train.overwrite=true"])
    seed_everything(run.cfg.train.seed)
    method = build_method(run.cfg, run.device, run.method_inputs)
    return knn_evaluation(method.backbone, run.dataset, run.cfg, run.device)[0]


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
        cli_main(["train", "--out", out, "train.overwrite=true", *overrides])
        minutes = (time.time() - start) / 60
        after = [r for r in read(Path(out) / "metrics.jsonl") if r["kind"] == "epoch"][-1]
        print(f"| {method} | {args.model} | {before:.1f} | {after['knn_top1']:.1f} | "
              f"{after['knn_top1'] - before:+.1f} | {minutes:.1f} |", flush=True)


if __name__ == "__main__":
    main()
