"""Where a CPU loader's time goes: CPU time per image in the main process and in each DataLoader
worker (read from /proc, so Linux only), beside images/s. CPU time moves less with the machine's
mood than wall time, and says which side to make cheaper.

Usage: python -m benchmarks.loader_cpu --data DIR [--backend nvjpeg] [--recipe sslight_cnn]
       [--views-ready] [--batches 30]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from benchmarks.loader_speed import RECIPES, cycle_epochs, default_main_threads, views_ready, warmup_batches
from loaders import build_loader
from loaders.datasets import discover

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def children() -> list[int]:
    me = os.getpid()
    return [int(p) for t in os.listdir(f"/proc/{me}/task") for p in open(f"/proc/{me}/task/{t}/children").read().split()]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--backend", default="nvjpeg")
    p.add_argument("--recipe", default="sslight_cnn", choices=sorted(RECIPES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--views-ready", action="store_true", help="also run sslight.augment in the main process")
    args = p.parse_args(argv)
    groups = RECIPES[args.recipe]
    device = torch.device("cpu")
    torch.set_num_threads(default_main_threads(args.workers))
    augment = views_ready(groups, device)
    split = discover(args.data).train
    stream = cycle_epochs(build_loader(args.backend, split, groups, args.batch, 0, device, args.workers).epoch,
                          f"{args.backend}, --batch {args.batch} with {len(split)} images")
    others = set(children())  # processes that are not this loader's workers
    for _ in range(warmup_batches(args.workers)):
        next(stream)
    workers = [p for p in children() if p not in others]
    start_workers = [cpu_seconds(w) for w in workers]
    start_main, start = time.process_time(), time.perf_counter()
    for _ in range(args.batches):
        batch = next(stream)
        if args.views_ready:
            augment(batch)
    images = args.batches * args.batch
    result = {"images/s": images / (time.perf_counter() - start),
              "main ms/image": 1e3 * (time.process_time() - start_main) / images,
              "workers ms/image": [1e3 * (cpu_seconds(w) - s) / images for w, s in zip(workers, start_workers)]}
    stream.close()
    print(f"{args.backend} {'views ready' if args.views_ready else 'geometry'}: "
          + ", ".join(f"{k} {[round(x, 2) for x in v] if isinstance(v, list) else round(v, 2)}"
                      for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
