"""Command line: ``sslight train [--model mnv2 ...] [key=value ...]``."""

from __future__ import annotations

import argparse
import sys

from loaders.datasets import DataError
from sslight.config import ConfigError

# flag -> dotted key; empty values (unset Make variables) are ignored
FLAGS = {
    "model": "model.name", "method": "method", "recipe": "recipe", "schedule": "schedule", "loader": "data.loader",
    "data": "data.path", "epochs": "train.epochs", "batch": "train.batch_size", "steps": "train.steps",
    "out": "train.out", "resume": "train.resume", "seed": "train.seed",
    "teacher": "teacher.path",
}
SWEEP_OWN = ("out", "resume")  # flags that mean the sweep's folder and resume mode, not a run's
DEFAULT_SWEEP_OUT = "runs/sweep"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslight", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="self-supervised pre-training")
    train.add_argument("--config", default="", help="a run's config.json or a YAML file with its keys: the base "
                       "that presets complete and the flags and key=value override")
    for flag, key in FLAGS.items():
        train.add_argument(f"--{flag}", default="", help=f"sets {key}")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="any dotted config key")
    sweep = sub.add_parser("sweep", help="a grid of short runs, each evaluated; table and plots")
    sweep.add_argument("--sweep", default="", help='the grid, e.g. "recipe=baseline,sslight loss.alpha=auto,0.4"')
    for flag, key in FLAGS.items():
        if flag not in SWEEP_OWN:
            sweep.add_argument(f"--{flag}", default="", help=f"sets {key} in every run")
    sweep.add_argument("--out", default="", help=f"the sweep's folder, one sub-folder per run; "
                       f"default {DEFAULT_SWEEP_OUT}")
    sweep.add_argument("--resume", default="", help="auto = resume interrupted runs")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="set in every run (over the short schedule)")
    sweep.add_argument("--linear", default="", help="true = also a linear probe per run")
    evaluate = sub.add_parser("eval", help="kNN, linear probe and semi-supervised fine-tuning of a checkpoint")
    evaluate.add_argument("--ckpt", default="", help="a checkpoint file or a run folder (its newest checkpoint)")
    evaluate.add_argument("--data", default="", help="sets data.path; default: the dataset of the run")
    evaluate.add_argument("--tasks", default="", help="comma-separated: knn,linear,semisup (default all)")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. linear.epochs=50 semisup.epochs=5")
    export = sub.add_parser("export", help="the student backbone as a timm-loadable safetensors file")
    export.add_argument("--ckpt", default="", help="a checkpoint file or a run folder (its newest checkpoint)")
    export.add_argument("--out", default="", help="the .safetensors file; default beside the checkpoint")
    return p


def overrides_from(args: argparse.Namespace) -> list[str]:
    flags = [f for f in FLAGS if args.command == "train" or f not in SWEEP_OWN]
    items = [f"{FLAGS[f]}={getattr(args, f)}" for f in flags if getattr(args, f) != ""]
    return items + list(args.overrides)


def run_command(args: argparse.Namespace) -> int:
    """The commands beside ``train``: sweep, eval, export."""
    from pathlib import Path

    from sslight.config import _parse_bool

    if args.command == "sweep":
        from sslight.sweep.schedule import sweep

        linear = _parse_bool("LINEAR", args.linear) if args.linear else False
        return sweep(args.sweep, overrides_from(args), Path(args.out or DEFAULT_SWEEP_OUT), args.resume, linear)
    if not args.ckpt:
        raise ConfigError("CKPT is empty: give a checkpoint file or a run folder, e.g. CKPT=runs/r18_dino_sslight")
    if args.command == "eval":
        from sslight.eval.run import main as evaluate

        data = [f"data.path={args.data}"] if args.data else []
        return evaluate(args.ckpt, data + list(args.overrides), args.tasks)
    from sslight.eval.export import main as export

    if args.overrides:
        raise ConfigError(f"export takes no key=value overrides, got {' '.join(args.overrides)}")
    return export(args.ckpt, args.out)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # overrides may sit between flags; argparse hands the later ones back as extras
    args, extra = p.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-")]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = list(getattr(args, "overrides", [])) + extra
    if args.command != "train":
        try:
            return run_command(args)
        except (ConfigError, DataError) as exc:
            print(f"sslight: error: {exc}", file=sys.stderr)
            return 2
    try:
        from sslight.config import read_file
        from sslight.train.loop import prepare, train

        run = prepare(overrides_from(args), read_file(args.config) if args.config else None, args.config)
    except (ConfigError, DataError) as exc:
        print(f"sslight: error: {exc}", file=sys.stderr)
        return 2
    from sslight import distributed
    from sslight.train import faults

    try:
        train(run)
    except faults.TrainingStopped as exc:
        print(f"sslight: error: {exc}", file=sys.stderr)
        return 1
    except faults.Interrupted as exc:
        if run.dist.main:
            print(f"sslight: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        distributed.shutdown()
    return 0
