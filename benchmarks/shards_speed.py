"""Views-ready images/s of every loader from a folder and from the same images packed into shards,
side by side in one run. Per loader, both sides' loaders run at once and take turns: each turn
skips the batches its loader prefetched while the other side was timed (the warm-up of
benchmarks/loader_speed.py), then times ``--batches`` batches; the side that goes first
alternates by turn. Drift in this machine's speed then falls on both sides alike, where timing
one side after the other put a difference of several percent between two runs of the same thing.
The ratio shards / folder is of the two sides' images/s over all their turns, with a 90% interval
from resampling the pairs of turns.

Usage: python -m benchmarks.shards_speed --data DIR [--shards DIR] [--repeat N] [--work DIR]
       [--shard-size 16M] [--backends pil nvjpeg dali ffcv] [--recipe sslight_cnn]
       [--batch 32] [--batches 10] [--rounds 3] [--csv out.csv]

``--rounds`` is the number of turns of each side. ``--repeat N`` measures on a folder of N hard
links to every image of ``--data`` (made once in ``--work``), so that a small sample fills
several shards of a small ``--shard-size``. Without ``--shards``, the folder is packed with
``sslight pack`` into ``--work`` once, and the time it took is printed. The "views ready" step is
loader_speed's (``sslight.augment`` with DINO's settings in the main process, the same threads).
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.loader_speed import RECIPES, cycle_epochs, default_main_threads, rate, views_ready, warmup_batches
from benchmarks.startup import pack
from loaders import build_loader
from loaders.datasets import load_dataset
from loaders.registry import missing
from sslight.recipes import Machine
from sslight.table import Table

SIDES = ("folder", "shards")


def repeated(source: Path, times: int, into: Path) -> Path:
    """A folder holding ``times`` hard links to every file of ``source`` (same tree, names
    prefixed ``rK-``), made once: decoding the same bytes again costs what new images would."""
    if times <= 1:
        return source
    target = into / f"{source.name}-x{times}"
    if target.is_dir():
        return target
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=into))
    for root, _, names in os.walk(source):
        out = tmp / Path(root).relative_to(source)
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            for k in range(times):
                os.link(Path(root) / name, out / f"r{k}-{name}")
    os.replace(tmp, target)  # whole or not at all
    return target


def paired_interval(folder: list[float], shards: list[float], level: float = 0.9) -> tuple[float, float]:
    """The ``level`` interval of sum(folder) / sum(shards) over resamplings of the turns' pairs
    (a pair: the two sides' seconds of one turn, timed back to back)."""
    f, s = np.asarray(folder), np.asarray(shards)
    picks = np.random.default_rng(0).integers(0, len(f), size=(2000, len(f)))
    ratios = f[picks].sum(1) / s[picks].sum(1)
    return tuple(np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2]))


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def main(argv: list[str] | None = None) -> Table:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="an image folder (ImageFolder tree, flat, with train/ ...)")
    p.add_argument("--shards", default="", help="the same images packed; default: packed into --work once")
    p.add_argument("--repeat", type=int, default=1, help="measure on N hard links to each image of --data")
    p.add_argument("--work", default="/tmp/sslight-shards-bench")
    p.add_argument("--shard-size", default="", help="sslight pack's --shard-size when packing here")
    p.add_argument("--backends", nargs="+", default=["pil", "nvjpeg", "dali", "ffcv"])
    p.add_argument("--recipe", default="sslight_cnn", choices=sorted(RECIPES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="the turns each side takes, each of --batches timed batches")
    p.add_argument("--workers", type=int, default=Machine.here().workers,
                   help="default: what make train takes here (data.workers=auto)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--csv", default="")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat {args.repeat}: allowed: 1 or more")
    folder = repeated(Path(args.data), args.repeat, Path(args.work))
    shards = Path(args.shards or Path(args.work) / f"{folder.name}-shards")
    if not args.shards:
        seconds = pack(folder, shards, ["--shard-size", args.shard_size] if args.shard_size else [])
        print(f"shards: {shards}" + (f" (sslight pack: {seconds:.1f} s)" if seconds else " (packed before)"),
              flush=True)
    splits = {"folder": load_dataset(str(folder)).train, "shards": load_dataset(str(shards)).train}
    n_shards = len(getattr(splits["shards"], "shards", []))
    groups = RECIPES[args.recipe]
    device = torch.device(args.device)
    n_views = sum(g.n for g in groups)
    warmup = warmup_batches(args.workers)
    augment = views_ready(groups, device)
    backends = []
    for backend in args.backends:
        if missing(backend):
            print(f"skipping {backend}: not installed here")
        else:
            backends.append(backend)
    failed: dict[tuple[str, str], str] = {}  # (backend, side) -> why it gave no batches
    timed: dict[tuple[str, str], list[float]] = {}  # (backend, side) -> each turn's timed seconds

    def take_turns(backend: str) -> None:
        streams = {}
        try:
            for side in SIDES:
                try:
                    loader = build_loader(backend, splits[side], groups, args.batch, 0, device, args.workers)
                    streams[side] = cycle_epochs(loader.epoch, f"{backend}, --batch {args.batch} with "
                                                               f"{len(splits[side])} images")
                    timed[backend, side] = []
                except Exception as exc:  # noqa: BLE001 - a loader that refuses this input is a row
                    failed[backend, side] = one_line(exc)
            for turn in range(args.rounds):
                for side in SIDES if turn % 2 == 0 else SIDES[::-1]:
                    if side not in streams:
                        continue
                    try:
                        ips = rate(streams[side], args.batches, args.batch, warmup, augment)
                    except Exception as exc:  # noqa: BLE001
                        failed[backend, side] = one_line(exc)
                        streams.pop(side).close()
                        continue
                    timed[backend, side].append(args.batches * args.batch / ips)
        finally:  # their workers gone before the next loader starts (see loader_speed.main)
            for stream in streams.values():
                stream.close()
            gc.collect()
        for side in SIDES:
            if (backend, side) in failed:
                print(f"{backend} from the {side}: no batches ({failed[backend, side]})", flush=True)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(default_main_threads(args.workers))
    start = time.perf_counter()
    try:
        for backend in backends:
            take_turns(backend)
    finally:
        torch.set_num_threads(previous_threads)
    minutes = (time.perf_counter() - start) / 60

    table = Table(f"views ready from a folder and from shards, {args.recipe}: {groups[0].n}x{groups[0].size} + "
                  f"{groups[1].n}x{groups[1].size}, batch {args.batch}, {args.workers} worker(s), {device.type}; "
                  f"{len(splits['folder'])} images in {folder}, {len(splits['shards'])} in {n_shards} shards in "
                  f"{shards}; {args.rounds} turns of {args.batches} batches per side ({minutes:.1f} min)",
                  ["loader", "data", "images/s", "views/s", "shards / folder", "90% interval", "note"])
    for b in backends:
        times = {s: timed.get((b, s)) if (b, s) not in failed else None for s in SIDES}
        both = times["folder"] and times["shards"]
        for s in SIDES:
            ips = args.batch * args.batches * len(times[s]) / sum(times[s]) if times[s] else None
            ratio, interval = (1.0, "") if s == "folder" else (None, "")
            if s == "shards" and both:
                ratio = sum(times["folder"]) / sum(times["shards"])
                low, high = paired_interval(times["folder"], times["shards"])
                interval = f"{low:.2f}-{high:.2f}"
            table.add(b, s, ips, None if ips is None else ips * n_views, ratio if ips else None, interval,
                      failed.get((b, s), ""))
    return table.emit(args.csv)


if __name__ == "__main__":
    main()
