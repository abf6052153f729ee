"""Every benchmark in one command (``make bench``, ``make bench-gpu``): tables on stdout, and in
the output folder one CSV and one PNG bar chart per table plus ``summary.md`` holding them all.

Usage: python -m benchmarks.suite [--profile cpu|gpu|gpu_dry] [--imagenet DIR] [--out runs/bench]
       [--parts loaders,augment,train]
The ImageNet-sized sample defaults to $SSLIGHT_DATA/imagenet-sample (``make bench`` unpacks
../shared/datasets/imagenet-sample.tar there); CIFAR-10 is prepared in $SSLIGHT_DATA as for training.
Every measured batch sits inside one epoch (steady state: no epoch end, checkpoint or loader
restart inside a measured window): a sample smaller than a profile reads in an epoch is measured
through links cycling through its images, and a dataset too small for the sizes is refused.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from benchmarks import augment_speed, loader_speed, train_speed
from loaders.datasets import data_root, discover, prepare_cifar10
from sslight.recipes import Machine
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
    train_batch: int
    train_end_to_end: str = ""  # model:mode pairs the loaders run with; "" = every one
    train_overrides: tuple[str, ...] = field(default=())
    train_on_imagenet: bool = False


TINY_HEADS = ("dino.out_dim=256", "dino.hidden_dim=128", "dino.bottleneck_dim=32")
GPU = Profile(recipes=("sslight_cnn",), backends="nvjpeg,dali,pil", loader_batch=128, loader_batches=60,
              loader_rounds=1, augment_batch=256, train_models="mnv2", train_modes="fp32_eager,bf16_compiled",
              train_loaders="auto,auto:serial,pil", train_windows=3, train_log_every=20, train_batch=128,
              train_end_to_end="mnv2:bf16_compiled", train_on_imagenet=True)
PROFILES = {
    # the 2-core CPU machine: the headline recipe on ImageNet-sized JPEGs and at CIFAR size, and
    # the default make train (auto loader and workers) against pil, end to end on the JPEGs
    "cpu": Profile(recipes=("sslight_cnn",), backends="pil,nvjpeg,dali,ffcv", loader_batch=32,
                   loader_batches=10, loader_rounds=3, augment_batch=32, train_models="mnv2",
                   train_modes="fp32_eager", train_loaders="auto,pil", train_windows=2, train_log_every=5,
                   train_batch=32, train_on_imagenet=True),
    # the GPU check's stage 2 (scripts/gpu_check.sh: loaders and augment within 100 s, training
    # within 190 s on one H100/H200): 224 px views from the ImageNet-sized sample; the default make
    # train (auto: nvjpeg, overlapped) against its serial path and pil, compiled bf16 against eager
    # fp32, MobileNetV2 only. The loader rows measure 60 batches, 4 turns of each of the 15 workers
    # on 16 cores, in 1 round; each training row 3 windows of 20 steps after a first.
    "gpu": GPU,
    # the same rows with tiny sizes (batches, views, heads) on the CPU: the GPU check's dry run
    # (GPU_CHECK_DRY=1, run by CI). Only fp32 eager: on a CPU compiling costs about a minute per
    # shape, and bf16 without native support (this CPU) 10-20 s a step even at these sizes.
    "gpu_dry": replace(GPU, recipes=("sslight_cifar",), loader_batch=4, loader_batches=2, augment_batch=4,
                       train_modes="fp32_eager", train_windows=1, train_log_every=1, train_batch=4,
                       train_end_to_end="mnv2:fp32_eager",
                       train_overrides=("views.global_size=32", "model.small_stem=false", *TINY_HEADS)),
}
PARTS = ("loaders", "augment", "train")


def loader_images(prof: Profile, workers: int) -> int:
    """The images a loader table reads in one epoch of each of its streams (warm-up and rows)."""
    return loader_speed.images_per_stream(prof.loader_batch, prof.loader_batches, workers)


def train_images(prof: Profile) -> int:
    """The images of every step of a training row: in one epoch, no epoch end (its checkpoint, a
    loader restart, a short log window) falls inside a measured window."""
    return prof.train_batch * prof.train_log_every * (prof.train_windows + 1)


def check_fits(what: str, images: int, needed: int, sizes: str) -> None:
    """Raises, in one line, where a dataset of ``images`` holds fewer than ``needed``."""
    if images < needed:
        raise SystemExit(f"{what}: {images} images, fewer than the {needed} that {sizes} reads in one epoch; "
                         "allowed: a dataset of at least that many, or smaller batches")


def enough_images(sample: Path, needed: int, into: Path) -> Path:
    """``sample`` where it holds ``needed`` images, else a folder of ``needed`` links cycling through
    its images, made once in ``into``: decoding the same bytes again costs what new images of
    those sizes would, and a small sample (the 200 carried to the GPU machine) fills the epochs
    that steady state needs."""
    files = discover(sample).train.files
    if len(files) >= needed:
        return sample
    target = into / f"{sample.name}-x{needed}"
    if not target.is_dir():
        into.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=into))
        for i in range(needed):
            source = Path(files[i % len(files)]).resolve()
            (tmp / f"{i:06d}-{source.name}").symlink_to(source)
        os.replace(tmp, target)  # whole or not at all
    print(f"note: {sample} holds {len(files)} images; measuring on {needed} links cycling through them in {target}")
    return target


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
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated of {', '.join(PARTS)}")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    for part in parts:
        if part not in PARTS:
            p.error(f"--parts: unknown part {part!r}; allowed: {', '.join(PARTS)}")
    prof = PROFILES[args.profile]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workers = Machine.here().workers  # the loader benchmark's default, as make train's
    datasets = {}
    if Path(args.imagenet).is_dir():  # one set of links for every part, made by the first
        needed = max(loader_images(prof, workers), train_images(prof) if prof.train_on_imagenet else 0)
        datasets["imagenet-sample"] = str(enough_images(Path(args.imagenet), needed, data_root()))
    else:
        print(f"note: no ImageNet-sized sample at {args.imagenet}; loaders measured on CIFAR-10 only")
    datasets["cifar10"] = str(prepare_cifar10())
    tables: dict[str, Table] = {}
    start = time.time()

    def emit(stem: str, table: Table, value: str, labels: list[str]) -> None:
        """Writes the table (again, where it grew) and the summary of every table so far: a run
        stopped later (the GPU check's time limit) keeps them."""
        tables[stem] = table
        table.write_csv(out / f"{stem}.csv")
        table.bar_chart(out / f"{stem}.png", value, labels)
        header = (f"# sslight benchmarks ({args.profile})\n\nCommand: `python -m benchmarks.suite --profile "
                  f"{args.profile} --parts {args.parts}`; commit {commit()}; {time.strftime('%Y-%m-%d')}; "
                  f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                  f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
                  f"torch {torch.__version__}; {(time.time() - start) / 60:.1f} min.\n")
        (out / "summary.md").write_text(header + "\n" + "\n\n".join(t.markdown() for t in tables.values()) + "\n")

    if "loaders" in parts:
        for name, path in datasets.items():
            check_fits(f"{name} ({path})", len(discover(path).train), loader_images(prof, workers),
                       f"the {args.profile} profile's loader rows (batch {prof.loader_batch}, {workers} workers)")
            for recipe in prof.recipes if name != "cifar10" else ("sslight_cifar",):
                table = loader_speed.main(["--data", path, "--recipe", recipe, "--backends",
                                           *prof.backends.split(","), "--batch", str(prof.loader_batch),
                                           "--batches", str(prof.loader_batches),
                                           "--rounds", str(prof.loader_rounds)])
                emit(f"loaders_{name}_{recipe}", table, "images/s", ["pipeline", "output"])
    if "augment" in parts:
        emit("augment", augment_speed.main(["--batch", str(prof.augment_batch), "--repeats", "3",
                                            "--pil-images", str(min(16, prof.augment_batch))]),
             "images/s", ["pipeline", "device", "group"])
    if "train" in parts:
        train_data = datasets["imagenet-sample"] if prof.train_on_imagenet and "imagenet-sample" in datasets \
            else datasets["cifar10"]
        check_fits(f"training data ({train_data})", len(discover(train_data).train), train_images(prof),
                   f"the {args.profile} profile's training rows (batch {prof.train_batch}, "
                   f"{prof.train_log_every * (prof.train_windows + 1)} steps)")
        train_speed.main(["--models", prof.train_models, "--modes", prof.train_modes,
                          "--loaders", prof.train_loaders, "--windows", str(prof.train_windows),
                          "--log-every", str(prof.train_log_every), "--out", str(out / "train_runs"),
                          "--end-to-end", prof.train_end_to_end, f"data.path={train_data}",
                          f"train.batch_size={prof.train_batch}", *prof.train_overrides],
                         emit=lambda stem, table, labels: emit(stem, table, "images/s", labels))
    print(f"wrote {out}/summary.md, {len(tables)} CSV files and PNG charts")
    return out


if __name__ == "__main__":
    main()
