"""One run of a sweep, in its own process: train, evaluate, write ``result.json``.

Usage (the sweep launches it): python -m sslight.sweep.run [--resume] [--linear] RUN_DIR key=value ...
The result file is written last and atomically, so its presence means the run is finished.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from loaders.datasets import DataError
from sslight import checkpoint
from sslight.checkpoint import write_json
from sslight.eval.run import evaluate_checkpoint
from sslight.interrupt import Interrupted
from sslight.sweep.grid import RESULT
from sslight.train.log import read
from sslight.train.loop import prepare, train


def images_per_s(records: list[dict]) -> float:
    """Mean throughput over the logged training windows."""
    rates = [r["images_per_s"] for r in records if r["kind"] == "train"]
    return sum(rates) / len(rates) if rates else float("nan")


def run(out: Path, overrides: list[str], resume: bool, linear: bool) -> dict:
    start = time.perf_counter()
    prepared = prepare([*overrides, f"train.out={out}", f"train.resume={'auto' if resume else ''}"])
    cfg, resumed = prepared.cfg, prepared.resume_from is not None
    train(prepared, Console(stderr=True))  # a fresh start begins a fresh metrics log
    records = read(out / "metrics.jsonl")
    evaluated = [r for r in records if r["kind"] == "epoch" and "knn_top1" in r]
    if not evaluated:
        raise DataError(f"data.path={cfg.data.path!r}: a sweep evaluates each run with kNN, which needs "
                        "labelled train/ and val/ or test/ splits")
    last_eval = evaluated[-1]
    knn_k = min(cfg.eval.k, len(prepared.dataset.train.subset(cfg.eval.bank_limit, cfg.train.seed)))  # as clipped
    result = dict(overrides=overrides, knn_top1=last_eval["knn_top1"], knn_k=knn_k,
                  epochs=cfg.train.epochs, steps=last_eval["steps"], images_per_s=images_per_s(records),
                  resumed=resumed)
    if linear:
        probe = evaluate_checkpoint(checkpoint.latest(out), [], ["linear"])["linear"]
        result.update(linear_top1=probe["top1"], linear_top5=probe["top5"])
    if prepared.device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_reserved(prepared.device) / 2**30
    result["wall_min"] = (time.perf_counter() - start) / 60
    write_json(out / RESULT, result)
    return result


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m sslight.sweep.run")
    p.add_argument("out", type=Path)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    p.add_argument("--linear", action="store_true", help="also a linear probe on cached features")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    try:
        run(args.out, args.overrides, args.resume, args.linear)
    except Interrupted as exc:  # the sweep stopped: one line in the run's log.txt, no traceback
        print(f"sslight: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
