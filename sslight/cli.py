"""Command line: ``sslight train [--model mnv2 ...] [key=value ...]``."""

from __future__ import annotations

import argparse
import sys

from loaders.datasets import DataError
from sslight.config import ConfigError

# flag -> dotted key; empty values (unset Make variables) are ignored
FLAGS = {
    "model": "model.name", "method": "method", "recipe": "recipe", "loader": "data.loader",
    "data": "data.path", "epochs": "train.epochs", "batch": "train.batch_size", "steps": "train.steps",
    "out": "train.out", "resume": "train.resume", "seed": "train.seed",
    "teacher": "teacher.path",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslight", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="self-supervised pre-training")
    for flag, key in FLAGS.items():
        train.add_argument(f"--{flag}", default="", help=f"sets {key}")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="any dotted config key")
    return p


def overrides_from(args: argparse.Namespace) -> list[str]:
    items = [f"{key}={getattr(args, flag)}" for flag, key in FLAGS.items() if getattr(args, flag) != ""]
    return items + list(args.overrides)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # overrides may sit between flags; argparse hands the later ones back as extras
    args, extra = p.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-")]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = list(args.overrides) + extra
    try:
        from sslight.recipes import build_config
        from sslight.train import prepare, train

        cfg, user_keys = build_config(overrides_from(args))
        run = prepare(cfg, user_keys)
    except (ConfigError, DataError) as exc:
        print(f"sslight: error: {exc}", file=sys.stderr)
        return 2
    train(run)
    return 0
