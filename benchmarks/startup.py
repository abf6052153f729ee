"""Start-up: time from launch to the first batch of the training loader, for one dataset as a
folder and as shards, side by side, on a first start (no caches) and a second start.

Usage: python -m benchmarks.startup [--cache DIR] [--images 200000] [--classes 100]
       [--loaders nvjpeg pil] [--drop-caches [--warm-imports]] [--csv out.csv]

Set-up, once, cached in ``--cache``: ``--images`` small synthetic JPEGs (48-64 px, noise and
gradients, fixed seed) in an ImageFolder tree ``folder/train/cNNN/``, and the same packed with
``sslight pack`` into ``shards/``. Each measured start is a fresh ``python`` process that does
what training does before its first step on the data side (``sslight/train/loop.py``):
``probe_image_size``, ``load_dataset``, ``build_loader`` and the first batch of ``epoch(0)``;
the clock starts before the process is spawned. A first start gets a fresh, empty
``SSLIGHT_DATA`` (so the scan cache is cold) and, with ``--drop-caches`` (root only), the
kernel's page, dentry and inode caches dropped just before (``sync; echo 3 >
/proc/sys/vm/drop_caches``), which makes python's and torch's own files cold too (several
seconds of imports, the same on both sides); ``--warm-imports`` then imports them once, untimed,
so that only the data is cold. The second start reuses that ``SSLIGHT_DATA`` and the warm caches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("import", "dataset", "loader", "first batch")


def synthetic_jpegs(count: int, seed: int) -> list[bytes]:
    """``count`` distinct small JPEGs (48-64 px a side, noise over a colour gradient)."""
    import numpy as np
    import simplejpeg

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        h, w = (int(s) for s in rng.integers(48, 65, size=2))
        y, x = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 256, size=3) + np.stack([x * rng.uniform(-3, 3), y * rng.uniform(-3, 3),
                                                         (x + y) * rng.uniform(-2, 2)], -1)
        noise = rng.normal(0, rng.uniform(5, 40), size=(h, w, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        images.append(simplejpeg.encode_jpeg(pixels, quality=int(rng.integers(75, 96)), colorspace="RGB"))
    return images


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """``jpeg`` with a COM segment after its SOI marker: a distinct, equally valid file."""
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def make_folder(target: Path, images: int, classes: int, seed: int, pool: int = 512) -> Path:
    """``images`` JPEGs in ``target/train/cNNN/NNNNNNN.jpg`` (round-robin over ``classes``), made
    once: written into a temporary folder renamed to ``target`` when complete."""
    if (target / "train").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        encoded = synthetic_jpegs(pool, seed)
        folders = [tmp / "train" / f"c{c:03d}" for c in range(classes)]
        for folder in folders:
            folder.mkdir(parents=True)
        for i in range(images):
            path = folders[i % classes] / f"{i:07d}.jpg"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, with_comment(encoded[i % pool], b"%d" % i))
            finally:
                os.close(fd)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def pack(source: Path, target: Path, extra: list[str]) -> float:
    """``sslight pack source target`` as a user types it; its seconds (0 where already packed)."""
    if (target / "index.json").exists():
        return 0.0
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sslight", "pack", str(source), str(target), *extra], cwd=ROOT,
                   check=True)
    return time.perf_counter() - start


def drop_caches() -> str:
    """Drops the page, dentry and inode caches; says whether it could."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "dropped"
    except OSError as exc:
        return f"not dropped ({type(exc).__name__}: {exc.strerror or exc})"


CHILD_IMPORTS = "import torch; import loaders, loaders.datasets"  # what child() imports


def child(path: str, loader: str, groups: str, batch: int, workers: int) -> None:
    """One start, as training makes it: prints the monotonic clock after each phase as JSON.
    ``groups``: the view groups as JSON (the recipes' module imports what a start does not)."""
    marks = {}
    import torch

    from loaders import ViewGroup, build_loader
    from loaders.datasets import load_dataset, probe_image_size
    marks["import"] = time.monotonic()
    probe_image_size(path)  # training resolves its view sizes from the data first
    dataset = load_dataset(path)
    marks["dataset"] = time.monotonic()
    views = [ViewGroup(n, size, tuple(scale), tuple(ratio)) for n, size, scale, ratio in json.loads(groups)]
    stream = build_loader(loader, dataset.train.subset(0, 0), views, batch, 0, torch.device("cpu"),
                          workers).epoch(0)
    marks["loader"] = time.monotonic()
    first = next(stream)
    marks["first batch"] = time.monotonic()
    assert first.size == batch, (first.size, batch)
    print(json.dumps({"marks": marks, "images": len(dataset.train)}), flush=True)
    stream.close()


def start(path: Path, loader: str, data_dir: Path, args) -> dict:
    """Seconds from before the spawn to the end of each phase of one fresh process."""
    from benchmarks.loader_speed import RECIPES

    groups = json.dumps([[g.n, g.size, list(g.scale), list(g.ratio)] for g in RECIPES[args.recipe]])
    env = {**os.environ, "SSLIGHT_DATA": str(data_dir)}
    launched = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--child", str(path), "--loaders", loader,
                          "--groups", groups, "--batch", str(args.batch), "--workers", str(args.workers)],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"start of {loader} on {path} failed (exit {out.returncode}): "
                         f"{(out.stderr.strip().splitlines() or ['no output'])[-1]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds": {k: v - launched for k, v in result["marks"].items()}, "images": result["images"]}


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser()
    p.add_argument("--cache", default="/tmp/sslight-startup", help="where the dataset and its shards are made once")
    p.add_argument("--images", type=int, default=200_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loaders", nargs="+", default=["nvjpeg", "pil"])
    p.add_argument("--sides", nargs="+", default=["folder", "shards"], choices=["folder", "shards"])
    p.add_argument("--recipe", default="sslight_cnn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="make train's data.workers=auto on 2 cores")
    p.add_argument("--shard-size", default="", help="passed to sslight pack as --shard-size")
    p.add_argument("--rounds", type=int, default=1, help="each round starts every loader on every side twice")
    p.add_argument("--drop-caches", action="store_true", help="drop the kernel's caches before each first start")
    p.add_argument("--csv", default="")
    p.add_argument("--warm-imports", action="store_true",
                   help="after dropping the caches, import what a start imports once (untimed): only the data "
                        "is cold, as for a new dataset on a machine that ran python before")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--groups", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.loaders[0], args.groups, args.batch, args.workers)
    if args.images < args.batch or args.classes < 1:
        p.error(f"--images {args.images} --classes {args.classes}: allowed: at least --batch ({args.batch}) "
                "images and one class")

    from sslight.table import Table

    cache = Path(args.cache) / f"{args.images}x{args.classes}-seed{args.seed}"
    made = time.perf_counter()
    folder = make_folder(cache / "folder", args.images, args.classes, args.seed)
    print(f"dataset: {folder} ({time.perf_counter() - made:.1f} s, made once)", flush=True)
    paths = {"folder": folder}
    if "shards" in args.sides:
        seconds = pack(folder, cache / "shards", ["--shard-size", args.shard_size] if args.shard_size else [])
        print(f"shards: {cache / 'shards'}" + (f" (sslight pack: {seconds:.1f} s)" if seconds else " (packed before)"),
              flush=True)
        paths["shards"] = cache / "shards"
    table = Table(f"start-up to the first batch: {args.images:,} JPEGs of 48-64 px in {args.classes} classes, "
                  f"recipe {args.recipe}, batch {args.batch}, {args.workers} worker(s); seconds from before the "
                  "spawn of a fresh python process to the end of each phase; 'data': from the end of the "
                  "imports (the same on both sides) to the first batch",
                  ["round", "loader", "start", "data", "caches", *PHASES, "data s", "x folder", "x folder, data"])
    rows = []
    for r in range(args.rounds):
        for loader in args.loaders:  # the folder and the shards side by side (which goes first alternates
            for side in args.sides if r % 2 == 0 else args.sides[::-1]:  # by round), a first then a second start
                data_dir = Path(tempfile.mkdtemp(prefix="sslight-data-"))
                try:
                    caches = drop_caches() if args.drop_caches else "warm (not dropped)"
                    if args.warm_imports:
                        subprocess.run([sys.executable, "-c", CHILD_IMPORTS], cwd=ROOT, check=True)
                        caches += ", then the imports warmed"
                    first = start(paths[side], loader, data_dir, args)
                    second = start(paths[side], loader, data_dir, args)
                finally:
                    shutil.rmtree(data_dir, ignore_errors=True)
                for which, result, state in (("first", first, f"empty SSLIGHT_DATA, page cache {caches}"),
                                             ("second", second, "warm")):
                    seconds = [result["seconds"][k] for k in PHASES]
                    rows.append([r + 1, loader, which, side, state, *seconds, seconds[-1] - seconds[0]])
    rows.sort(key=lambda row: (row[0], args.loaders.index(row[1]), row[2], args.sides.index(row[3])))
    for row in rows:  # the folder's seconds over this row's, for the same round, loader and start
        folder = next((f for f in rows if f[:3] == row[:3] and f[3] == "folder"), None)
        table.add(*row, folder[-2] / row[-2] if folder else None, folder[-1] / row[-1] if folder else None)
    return table.emit(args.csv)


if __name__ == "__main__":
    main()
