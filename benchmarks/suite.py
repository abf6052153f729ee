"""Every benchmark in one command (``make bench``, ``make bench-gpu``): tables on stdout, and in
the output folder one CSV and one PNG bar chart per table plus ``summary.md`` holding them all.

Usage: python -m benchmarks.suite [--profile cpu|gpu|smoke] [--imagenet DIR] [--out runs/bench]
The ImageNet-sized sample defaults to $SSLIGHT_DATA/imagenet-sample (``make bench`` unpacks
../shared/datasets/imagenet-sample.tar there); CIFAR-10 is prepared in $SSLIGHT_DATA as for training.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import augment_speed, loader_speed, train_speed
from loaders.datasets import data_root, prepare_cifar10
from sslight.table import Table


@dataclass(frozen=True)
class Profile:
    recipes: tuple[str, ...]  # on the ImageNet-sized sample; CIFAR-10 gets sslight_cifar
    backends: str
    loader_batch: int
    loader_batches: int
    loader_rounds: int
    augment_batch: int
    train_models: str
    train_modes: str
    train_loaders: str
    train_windows: int
    train_log_every: int
    train_end_to_end: str = ""  # model:mode pairs the loaders run with; "" = every one
    train_overrides: tuple[str, ...] = field(default=())
    train_on_imagenet: bool = False


PROFILES = {
    # the 2-core CPU machine: the headline recipe on ImageNet-sized JPEGs and at CIFAR size, and
    # the default make train (auto loader and workers) against pil, end to end on the JPEGs
    "cpu": Profile(recipes=("sslight_cnn",), backends="pil,nvjpeg,dali,ffcv", loader_batch=32,
                   loader_batches=10, loader_rounds=3, augment_batch=32, train_models="mnv2",
                   train_modes="fp32_eager", train_loaders="auto,pil", train_windows=2, train_log_every=5,
                   train_on_imagenet=True, train_overrides=("train.batch_size=32",)),
    # one call on one H100/H200: 224 px views from the ImageNet-sized sample; the default make
    # train (auto: nvjpeg, overlapped) against its serial path and pil, compiled bf16 mnv2
    "gpu": Profile(recipes=("sslight_cnn",), backends="nvjpeg,dali,pil", loader_batch=256,
                   loader_batches=20, loader_rounds=2, augment_batch=256, train_models="mnv2,r18",
                   train_modes="fp32_eager,bf16_compiled", train_loaders="auto,auto:serial,pil",
                   train_windows=3, train_log_every=10, train_end_to_end="mnv2:bf16_compiled",
                   train_on_imagenet=True, train_overrides=("train.batch_size=128",)),
    # CI: every benchmark for a few batches
    "smoke": Profile(recipes=("sslight_cnn",), backends="pil,nvjpeg,synthetic", loader_batch=8, loader_batches=2,
                     loader_rounds=1, augment_batch=4, train_models="mnv2", train_modes="fp32_eager",
                     train_loaders="pil", train_windows=1, train_log_every=1,
                     train_overrides=("train.batch_size=8", "data.limit=64", "data.workers=0",
                                      "dino.out_dim=256", "dino.hidden_dim=128", "dino.bottleneck_dim=32")),
}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser()
    p.add_argument("--profile", default="gpu" if torch.cuda.is_available() else "cpu", choices=sorted(PROFILES))
    p.add_argument("--imagenet", default=str(data_root() / "imagenet-sample"))
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args(argv)
    prof = PROFILES[args.profile]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cifar = prepare_cifar10()
    datasets = {"cifar10": str(cifar)}
    if Path(args.imagenet).is_dir():
        datasets = {"imagenet-sample": args.imagenet, **datasets}
    else:
        print(f"note: no ImageNet-sized sample at {args.imagenet}; loaders measured on CIFAR-10 only")
    tables: list[tuple[str, Table, str, list[str]]] = []
    start = time.time()
    for name, path in datasets.items():
        for recipe in prof.recipes if name != "cifar10" else ("sslight_cifar",):
            table = loader_speed.main(["--data", path, "--recipe", recipe, "--backends", *prof.backends.split(","),
                                  "--batch", str(prof.loader_batch), "--batches", str(prof.loader_batches),
                                  "--rounds", str(prof.loader_rounds)])
            tables.append((f"loaders_{name}_{recipe}", table, "images/s", ["pipeline", "output"]))
    tables.append(("augment", augment_speed.main(["--batch", str(prof.augment_batch), "--repeats", "3",
                                            "--pil-images", str(min(16, prof.augment_batch))]),
                   "images/s", ["pipeline", "device", "group"]))
    train_data = [f"data.path={args.imagenet}"] if prof.train_on_imagenet and "imagenet-sample" in datasets else []
    bound, end_to_end = train_speed.main(["--models", prof.train_models, "--modes", prof.train_modes,
                                    "--loaders", prof.train_loaders, "--windows", str(prof.train_windows),
                                    "--log-every", str(prof.train_log_every), "--out", str(out / "train_runs"),
                                    "--end-to-end", prof.train_end_to_end,
                                    *prof.train_overrides, *train_data])
    tables.append(("train_model", bound, "images/s", ["model", "method", "mode"]))
    tables.append(("train_loaders", end_to_end, "images/s", ["model", "mode", "loader"]))

    header = (f"# sslight benchmarks ({args.profile})\n\nCommand: `python -m benchmarks.suite --profile "
              f"{args.profile}`; commit {commit()}; {time.strftime('%Y-%m-%d')}; {platform.machine()}, "
              f"{torch.get_num_threads()} torch threads, "
              f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
              f"torch {torch.__version__}; {(time.time() - start) / 60:.1f} min.\n")
    for stem, table, value, labels in tables:
        table.write_csv(out / f"{stem}.csv")
        table.bar_chart(out / f"{stem}.png", value, labels)
    (out / "summary.md").write_text(header + "\n" + "\n\n".join(t.markdown() for _, t, _, _ in tables) + "\n")
    print(f"wrote {out}/summary.md, {len(tables)} CSV files and PNG charts")
    return out


if __name__ == "__main__":
    main()
