"""Views-ready images/s of every loader from a folder and from the same images packed into shards,
side by side in one run: each round measures, per loader, the folder and the shards one after the
other (which goes first alternates by round), and the ratio shards / folder is taken within a
round, where the machine's mood is shared; the table gives its median and its range over rounds.

Usage: python -m benchmarks.shards_speed --data DIR [--shards DIR] [--repeat N] [--work DIR]
       [--shard-size 16M] [--backends pil nvjpeg dali ffcv] [--recipe sslight_cnn]
       [--batch 32] [--batches 10] [--rounds 3] [--csv out.csv]

``--repeat N`` measures on a folder of N hard links to every image of ``--data`` (made once in
``--work``), so that a small sample fills several shards of a small ``--shard-size``. Without
``--shards``, the folder is packed with ``sslight pack`` into ``--work`` once, and the time it
took is printed. Timing is benchmarks/loader_speed.py's: the same warm-up, the same "views
ready" step (``sslight.augment`` with DINO's settings) in the main process, the same threads.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

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
    p.add_argument("--rounds", type=int, default=3, help="every loader is measured on both sides once per round")
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
    failed: dict[tuple[str, str], str] = {}  # (backend, side) -> why it gave no batches: not tried again

    def measure(backend: str, side: str, round_: int) -> float | None:
        if (backend, side) in failed:
            return None
        split = splits[side]
        stream = None
        try:
            loader = build_loader(backend, split, groups, args.batch, 0, device, args.workers)
            # round r reads from epoch r on: each round times other images (their sizes, so their
            # decode cost, vary), where epoch 0 in every round would keep one side's sample for all
            stream = cycle_epochs(lambda epoch: loader.epoch(epoch + round_),
                                  f"{backend}, --batch {args.batch} with {len(split)} images")
            return rate(stream, args.batches, args.batch, warmup, augment)
        except Exception as exc:  # noqa: BLE001 - a loader that refuses this input is a row, not the end
            failed[backend, side] = one_line(exc)
            print(f"{backend} from the {side}: no batches ({failed[backend, side]})", flush=True)
            return None
        finally:  # its workers gone before the next loader starts (see loader_speed.main)
            if stream is not None:
                stream.close()
            gc.collect()

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(default_main_threads(args.workers))
    start = time.perf_counter()
    try:
        # the side measured first alternates from round to round: a drift of the machine's load
        # within a round then favours neither
        rounds = [{(b, s): measure(b, s, r) for b in backends for s in (SIDES if r % 2 == 0 else SIDES[::-1])}
                  for r in range(args.rounds)]
    finally:
        torch.set_num_threads(previous_threads)
    minutes = (time.perf_counter() - start) / 60

    def median(values):
        values = [v for v in values if v is not None]
        return float(torch.tensor(values).median()) if values else None

    table = Table(f"views ready from a folder and from shards, {args.recipe}: {groups[0].n}x{groups[0].size} + "
                  f"{groups[1].n}x{groups[1].size}, batch {args.batch}, {args.workers} worker(s), {device.type}; "
                  f"{len(splits['folder'])} images in {folder}, {len(splits['shards'])} in {n_shards} shards in "
                  f"{shards}; medians of {args.rounds} rounds of {args.batches} batches ({minutes:.1f} min)",
                  ["loader", "data", "images/s", "views/s", "shards / folder", "rounds' range", "note"])
    for b in backends:
        for s in SIDES:
            ips = median([r[b, s] for r in rounds])
            ratios = [r[b, s] / r[b, "folder"] for r in rounds if r[b, s] is not None and r[b, "folder"] is not None]
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios and s != "folder" else ""
            table.add(b, s, ips, None if ips is None else ips * n_views, median(ratios), spread,
                      failed.get((b, s), ""))
    return table.emit(args.csv)


if __name__ == "__main__":
    main()
