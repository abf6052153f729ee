"""The CPU learning check: each method's short-schedule run (``SCHEDULE=short``), which measures
kNN top-1 at initialisation and at the end; one markdown row per method.

Usage: python -m benchmarks.learning [--methods dino,swav,moco] [--model mnv2] [--seeds 0]
       [--out runs/learning] [key=value ...]
The runs land in ``<out>/<model>_<method>_s<seed>`` (replaced when run again).
"""

from __future__ import annotations

import argparse
import time

from sslight.cli import main as cli_main
from sslight.train.log import read


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="dino,swav,moco", help="comma-separated")
    p.add_argument("--model", default="mnv2")
    p.add_argument("--seeds", default="0", help="comma-separated")
    p.add_argument("--out", default="runs/learning", help="the folder the runs land in")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    print("| method | model | seed | kNN top-1 at init | kNN top-1 after | gain (points) | minutes | lowest rank fraction |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method in args.methods.split(","):
        for seed in args.seeds.split(","):
            out = f"{args.out}/{args.model}_{method}_s{seed}"
            start = time.time()
            code = cli_main(["train", "--out", out, "--schedule", "short", "--method", method, "--model", args.model,
                             "--seed", seed, "train.overwrite=true", *args.overrides])
            if code:
                raise SystemExit(f"{out}: training failed (exit {code}); its messages are above")
            minutes = (time.time() - start) / 60
            records = read(f"{out}/metrics.jsonl")
            init = next(r["knn_top1"] for r in records if r["kind"] == "init")
            after = [r for r in records if r["kind"] == "epoch"][-1]["knn_top1"]
            rank = min(r["rank_fraction"] for r in records if r["kind"] == "train")
            print(f"| {method} | {args.model} | {seed} | {init:.1f} | {after:.1f} | {after - init:+.1f} | "
                  f"{minutes:.1f} | {rank:.2f} |", flush=True)


if __name__ == "__main__":
    main()
