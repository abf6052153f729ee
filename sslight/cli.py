"""Command line: ``sslight train|sweep|eval|export|plot|config|pack``; ``sslight COMMAND --help`` for each.

Only the standard library and sslight.config are imported here, so that ``--help`` answers at once;
a command imports what it runs (torch and the rest) once its arguments are read.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from sslight import __version__
from sslight.config import Config, ConfigError, get

# flag -> dotted key; empty values (unset Make variables) are ignored
FLAGS = {
    "model": "model.name", "method": "method", "recipe": "recipe", "schedule": "schedule", "loader": "data.loader",
    "data": "data.path", "epochs": "train.epochs", "batch": "train.batch_size", "steps": "train.steps",
    "out": "train.out", "resume": "train.resume", "seed": "train.seed",
    "teacher": "teacher.path",
}
SWEEP_OWN = ("out", "resume")  # flags that mean the sweep's folder and resume mode, not a run's
DEFAULT_SWEEP_OUT = "runs/sweep"

# The names the registries hold (recipes.choices()), written out because reading them imports torch
# (5 s) and --help must be quick; tests/test_cli.py checks that they are the registries' names.
HELP_CHOICES = {
    "model.name": ("mnv2", "r18", "r34", "r50", "vit_t16", "vit_t32", "vit_s16"),
    "method": ("dino", "swav", "moco", "rob_dino"),
    "recipe": ("baseline", "sslight"),
    "schedule": ("full", "short"),
    "data.loader": ("auto", "pil", "nvjpeg", "dali", "ffcv", "synthetic"),
}
FLAG_NOTES = {
    "schedule": "short: 60,000 images, kNN at the start and the end (the CPU learning check)",
    "data": 'a folder of images (with train/ and val/ or test/ for kNN), a packed dataset (sslight pack) or its '
            'http(s) URL; "" = CIFAR-10',
    "out": "the run folder; auto = runs/<model>_<method>_<recipe>[_<schedule>][_<data>][_seed<N>]",
    "resume": '"" = start fresh, auto = the newest checkpoint in the run folder, or a ckpt-*.pt file',
    "steps": "stop after N optimiser steps (a smoke run); 0 = all epochs",
    "teacher": "rob_dino's frozen teacher: a checkpoint (.pt) or a timm backbone (.safetensors)",
    "loader": "auto = the backend measured fastest here for data of this kind",
}

# Make variable -> the flag it passes (Makefile); messages name inputs that are no config key by their
# Make variable (CKPT=, RESUME=auto, OUT) and are said back to a command-line user with the flag
MAKE_FLAGS = {
    "train": {**{name.upper(): f"--{name}" for name in FLAGS}, "CONFIG": "--config"},
    "sweep": {**{name.upper(): f"--{name}" for name in FLAGS}, "CONFIG": "--config", "SWEEP": "--sweep",
              "LINEAR": "--linear"},
    "eval": {"CKPT": "--ckpt", "DATA": "--data", "TASKS": "--tasks"},
    "export": {"CKPT": "--ckpt", "EXPORT_OUT": "--out"},
    "plot": {"RUNS": "RUN", "PLOT_OUT": "--out"},
    "config": {**{name.upper(): f"--{name}" for name in FLAGS}, "CONFIG": "--config"},
    "pack": {"DATA": "SRC", "SHARDS": "DST", "SHARD_SIZE": "--shard-size", "REENCODE": "--reencode"},
}
VIA_MAKE = "SSLIGHT_VIA_MAKE"  # set by the Makefile: messages then name Make variables

EXAMPLES = {
    "train": """examples:
  sslight train --model r18 --schedule short          the CPU learning check (about 15 min on 2 cores)
  sslight train --model mnv2 --method dino            the full schedule (a GPU run)
  sslight train --data ~/images --model r18 optim.lr=0.3 views.n_local=10
  sslight train --config runs/r18_dino_sslight_short/config.json --seed 1   the same run, another seed
  sslight train --out runs/r18_dino_sslight_short --resume auto

Any key of `sslight config --keys` can be given as key=value; pairs as min,max, e.g.
views.global_scale=0.3,1.0. The flags and key=value beat --config, which beats the presets.""",
    "sweep": """examples:
  sslight sweep --sweep "recipe=baseline,sslight train.seed=0,1,2" --model r18
  sslight sweep --sweep "views.global_scale=(0.14,1.0),(0.3,1.0)" --out runs/scale
  sslight sweep --sweep "loss.alpha=auto,0.4" --config base.yaml --resume auto

Each run is a short-schedule run (--schedule or --config change that) in OUT/<key=value...>.""",
    "eval": """examples:
  sslight eval --ckpt runs/r18_dino_sslight_short
  sslight eval --ckpt runs/r18_dino_sslight_short --tasks knn,linear linear.epochs=50""",
    "export": """examples:
  sslight export --ckpt runs/r18_dino_sslight_short
  sslight export --ckpt runs/r18_dino_sslight_short --out r18.safetensors""",
    "plot": """examples:
  sslight plot runs/r18_dino_sslight_short                  writes runs/r18_dino_sslight_short/curves.png
  sslight plot runs/r18_dino_baseline_short runs/r18_dino_sslight_short --out compare.png""",
    "config": """examples:
  sslight config --model r18 --schedule short       the config that run would use here
  sslight config --config runs/x/config.json --format yaml
  sslight config --keys                             every key: default, type, allowed values""",
    "pack": """examples:
  sslight pack /data/imagenet /data/imagenet-shards         train/ and val/ into shards of about 256 MB
  sslight pack cifar10 /data/cifar10-shards --shard-size 64MB
  sslight pack /data/photos /data/photo-shards --reencode 90    every image a JPEG of quality 90

The same command again after an interruption goes on from the complete shards. Train from the
shards with --data DST (a folder, or the URL of a server holding it).""",
}


def flag_help(flag: str) -> str:
    key = FLAGS[flag]
    default = get(Config(), key)
    parts = [key] + ([FLAG_NOTES[flag]] if flag in FLAG_NOTES else [])
    if key in HELP_CHOICES:
        parts.append("one of " + ", ".join(HELP_CHOICES[key]))
    parts.append(f"default {default!r}" if default == "" else f"default {default}")
    return "; ".join(parts)


def subcommand(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def run_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    p.add_argument("--config", default="", help="a run's config.json (its machine's choices and its folder are "
                   "chosen afresh here) or a YAML file with any of the keys: the base the flags and key=value "
                   "override")
    for flag in FLAGS:
        if flag not in skip:
            p.add_argument(f"--{flag}", default="", metavar=flag.upper(), help=flag_help(flag))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslight", description="Fast self-supervised pre-training of low-compute "
                                "vision backbones (DINO, SwAV, MoCo-v2; the SSLight recipe).")
    p.add_argument("--version", action="version", version=f"sslight {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = subcommand(sub, "train", "self-supervised pre-training")
    run_flags(train)
    train.add_argument("overrides", nargs="*", metavar="key=value", help="any config key (sslight config --keys)")

    sweep = subcommand(sub, "sweep", "a grid of short runs, each evaluated; a table and plots")
    sweep.add_argument("--sweep", default="", help='the grid: keys by spaces, values by commas, pairs in '
                       'parentheses, e.g. "recipe=baseline,sslight views.global_scale=(0.14,1.0),(0.3,1.0)"')
    run_flags(sweep, skip=SWEEP_OWN)
    sweep.add_argument("--out", default="", help=f"the sweep's folder, one sub-folder per run; default "
                       f"{DEFAULT_SWEEP_OUT}")
    sweep.add_argument("--resume", default="", help="auto = resume the interrupted runs; default '' (refuse)")
    sweep.add_argument("--linear", default="", help="true = also a linear probe per run; default false")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="set in every run")

    evaluate = subcommand(sub, "eval", "kNN, linear probe and semi-supervised fine-tuning of a checkpoint")
    evaluate.add_argument("--ckpt", default="", help="a checkpoint file or a run folder (its newest checkpoint)")
    evaluate.add_argument("--data", default="", help="sets data.path; default: the dataset of the run")
    evaluate.add_argument("--tasks", default="", help="comma-separated: knn,linear,semisup; default knn on a "
                          "CPU, all three on a GPU")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. linear.epochs=50 semisup.epochs=5")

    export = subcommand(sub, "export", "the student backbone as a timm-loadable safetensors file")
    export.add_argument("--ckpt", default="", help="a checkpoint file or a run folder (its newest checkpoint)")
    export.add_argument("--out", default="", help="the .safetensors file; default beside the checkpoint")

    plot = subcommand(sub, "plot", "a run's curves (loss, lr, images/s, data-wait, rank, kNN); several overlaid")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each with its metrics.jsonl)")
    plot.add_argument("--out", default="", help="the PNG; default RUN/curves.png for one run, else curves.png here")

    show = subcommand(sub, "config", "the config a train command would resolve here, printed; nothing runs")
    run_flags(show)
    show.add_argument("--format", default="json", choices=("json", "yaml"), help="default json (as config.json)")
    show.add_argument("--keys", action="store_true", help="list every key: default, type, allowed values, meaning")
    show.add_argument("--markdown", action="store_true", help="with --keys: as a markdown table")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="any config key")

    pack = subcommand(sub, "pack", "a dataset into tar shards every loader reads, from disk or over HTTP")
    pack.add_argument("src", metavar="SRC", help="a folder with train/ (and val/ or test/), an ImageFolder tree, a "
                      'folder of images, or cifar10 ("" too): CIFAR-10 from the data directory')
    pack.add_argument("dst", metavar="DST", help="the shards' folder: new or empty, or one an interrupted pack of "
                      "the same source was writing (it goes on)")
    pack.add_argument("--shard-size", default="", help="about this many bytes per shard, e.g. 64MB, 1GB; default "
                      "256MB")
    pack.add_argument("--reencode", default="", metavar="Q", help="every image re-encoded as a JPEG of quality Q "
                      "(1-100); default: JPEG bytes as they are, other images as lossless PNG")
    pack.add_argument("--workers", default="", help="threads reading and checking the files; default 2 per core, at least 4")
    return p


def overrides_from(args: argparse.Namespace) -> list[str]:
    return [f"{FLAGS[f]}={getattr(args, f)}" for f in given_flags(args)] + list(args.overrides)


def given_flags(args: argparse.Namespace) -> list[str]:
    return [f for f in FLAGS if getattr(args, f, "") != "" and (args.command in ("train", "config")
                                                                 or f not in SWEEP_OWN)]


def as_typed(message: str, args: argparse.Namespace, via_make: bool) -> str:
    """``message`` naming each input as the user gave it: a key set by a flag as that flag (``--model``)
    or, under make, its variable (``MODEL=``); flags and Make variables the message names, as the
    one or the other."""
    make_flags = MAKE_FLAGS[args.command]
    variable = {flag: var for var, flag in make_flags.items()}
    for flag in given_flags(args):
        name = variable[f"--{flag}"] + "=" if via_make else f"--{flag} "
        message = re.sub(rf"(?<![\w.-]){re.escape(FLAGS[flag])}=", name, message)
    if via_make:
        flags = "|".join(re.escape(f) for f in sorted(variable, key=len, reverse=True) if f.startswith("--"))
        return re.sub(rf"(?<![\w-])({flags})\b( |=)?", lambda m: variable[m.group(1)] + ("=" if m.group(2) else ""),
                      message)
    names = "|".join(sorted(make_flags, key=len, reverse=True))
    return re.sub(rf"\b({names})\b(=?)", lambda m: make_flags[m.group(1)] + (" " if m.group(2) else ""), message)


def run_command(args: argparse.Namespace) -> int:
    """The commands beside ``train``: sweep, eval, export, plot, config."""
    from pathlib import Path

    from sslight.config import _parse_bool

    if args.command == "config":
        return show_config(args)
    if args.command == "pack":
        return pack_command(args)
    if args.command == "plot":
        from sslight.plot import main as plot

        return plot(args.runs, args.out)
    if args.command == "sweep":
        from sslight.sweep.schedule import sweep

        linear = _parse_bool("LINEAR", args.linear) if args.linear else False
        return sweep(args.sweep, overrides_from(args), Path(args.out or DEFAULT_SWEEP_OUT), args.resume, linear,
                     args.config)
    if not args.ckpt:
        raise ConfigError("no checkpoint: give CKPT, a checkpoint file or a run folder, e.g. CKPT=runs/r18_dino_sslight_short")
    if args.command == "eval":
        from sslight.eval.run import main as evaluate

        data = [f"data.path={args.data}"] if args.data else []
        return evaluate(args.ckpt, data + list(args.overrides), args.tasks)
    from sslight.eval.export import main as export

    if args.overrides:
        raise ConfigError(f"export takes no key=value overrides, got {' '.join(args.overrides)}")
    return export(args.ckpt, args.out)


def pack_command(args: argparse.Namespace) -> int:
    """``sslight pack SRC DST``: the progress while it packs, then what it wrote and what it left out."""
    from loaders.datasets import DataError
    from loaders.pack import DEFAULT_SHARD_BYTES, Bar, pack, parse_size, report

    via_make = os.environ.get(VIA_MAKE) == "1"
    try:
        if args.overrides:
            raise DataError(f"pack takes SRC DST and its flags, got also {' '.join(args.overrides)}")
        workers = int(args.workers) if args.workers.isdigit() and int(args.workers) > 0 else 0
        if args.workers and not workers:
            raise DataError(f"--workers {args.workers!r}: allowed: a number of threads, 1 or more")
        size = parse_size(args.shard_size) if args.shard_size else DEFAULT_SHARD_BYTES
        packed = pack(args.src, args.dst, size, args.reencode or None, workers, progress=Bar())
    except DataError as exc:
        message = str(exc)
        if via_make:
            message = re.sub(r"\bSRC=", "DATA=", re.sub(r"\bDST=", "SHARDS=", message))
        raise DataError(message) from None
    except KeyboardInterrupt:
        print(f"sslight: pack stopped; its complete shards are kept in {args.dst}: the same command again goes on "
              "from them", file=sys.stderr)
        return 130
    emit("\n".join(report(packed)))
    return 0


def show_config(args: argparse.Namespace) -> int:
    """``sslight config``: the resolved config on stdout, or with ``--keys`` every key."""
    import json

    from sslight import recipes

    if args.keys:
        from sslight import keys

        rows = keys.keys(recipes.choices())
        emit(keys.markdown(rows) if args.markdown else keys.text(rows))
        return 0
    if args.markdown:
        raise ConfigError("--markdown goes with --keys (the key table)")
    from loaders.datasets import probe_image_size
    from sslight.config import read_file, to_dict

    request = recipes.parse(overrides_from(args), read_file(args.config) if args.config else None, args.config)
    cfg = recipes.resolve(request, recipes.Machine.here(), probe_image_size(request.cfg.data.path))
    data = json.loads(json.dumps(to_dict(cfg)))  # pairs as lists
    if args.format == "yaml":
        import yaml

        class Dumper(yaml.SafeDumper):  # sections as blocks, pairs inline as [min, max]
            pass

        Dumper.add_representer(list, lambda dumper, v: dumper.represent_sequence("tag:yaml.org,2002:seq", v,
                                                                                    flow_style=True))
        emit(yaml.dump(data, Dumper=Dumper, sort_keys=False).rstrip("\n"))
    else:
        emit(json.dumps(data, indent=1))
    return 0


def emit(text: str) -> None:
    """Print to stdout; a reader that closes the pipe early (``sslight config --keys | head``) ends
    the output quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


def flag_hint(name: str) -> str:
    """For an unknown ``--name``: the key it may mean (``--lr`` -> ``optim.lr=...``), else the closest flag."""
    import difflib

    from sslight.config import all_keys

    known = [f"--{f}" for f in FLAGS] + ["--config", "--sweep", "--linear", "--ckpt", "--tasks", "--keys"]
    near = [f"{key}=..." for key in all_keys() if key == name[2:] or key.endswith("." + name[2:])][:1] \
        or difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    return f"; did you mean {near[0]}?" if near else ""


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # overrides may sit between flags; argparse hands the later ones back as extras
    args, extra = p.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-")]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}{flag_hint(unknown[0].split('=')[0])}")
    args.overrides = list(getattr(args, "overrides", [])) + extra
    from loaders.datasets import DataError
    from sslight.interrupt import Interrupted

    via_make = os.environ.get(VIA_MAKE) == "1"
    try:
        if args.command != "train":
            return run_command(args)
        from sslight.config import read_file
        from sslight.train.loop import prepare

        run = prepare(overrides_from(args), read_file(args.config) if args.config else None, args.config)
    except (ConfigError, DataError) as exc:
        print(f"sslight: error: {as_typed(str(exc), args, via_make)}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # a stop during eval, a sweep or before training starts: one line
        print(f"sslight: {exc}", file=sys.stderr)
        return exc.exit_code
    return train(run)


def train(run) -> int:
    from sslight import distributed
    from sslight.train import faults
    from sslight.train.loop import train as train_loop

    try:
        train_loop(run)
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
