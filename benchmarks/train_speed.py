"""Training throughput through the real trainer: images/s per model x method x mode on the
synthetic loader (no I/O: the model's bound), then end to end with each real loader, giving
loader efficiency = real / synthetic images/s and the data-wait share of step time.

Usage: python -m benchmarks.train_speed [--models mnv2] [--methods dino] [--modes fp32_eager]
       [--loaders auto,auto:serial,pil] [--windows 3] [--log-every 5] [--out runs/bench/train]
       [--csv out.csv] [key=value ...]
A loader is a backend name or ``auto`` (what ``make train`` takes when LOADER is not given: the
table names the backend it resolved to); ``:serial`` turns off the decode overlap
(``data.overlap=false``), which changes something only where the training process decodes
(nvjpeg on CUDA).
Each run is ``python -m sslight train --steps N``, its steps in one epoch; figures are the mean of
the logged windows after the first (the first holds worker start-up and compilation). Compiled
runs also report the graphs torch.compile built (``compiled_graphs`` in metrics.jsonl) and how many
of them came after the first window: recompiles inside the measured windows.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from pathlib import Path

import torch

from loaders.registry import missing
from sslight.cli import main as cli_main
from sslight.table import Table
from sslight.train.log import read

MODES = {
    "fp32_eager": ["train.precision=fp32", "train.compile=false"],
    "bf16_eager": ["train.precision=bf16", "train.compile=false"],
    "bf16_compiled": ["train.precision=bf16", "train.compile=true"],
}
# On a CPU without bf16 units the bf16 modes run 10-20x slower (BENCHMARKS.md, precision) and
# compiling costs about a minute per shape: the CPU suite measures fp32 eager unless asked.
DEFAULT_MODES = {"cuda": "fp32_eager,bf16_eager,bf16_compiled", "cpu": "fp32_eager"}
# evaluation is not timed; a tiny bank keeps its wall time negligible
QUIET = ["eval.every=0", "eval.bank_limit=100", "eval.query_limit=100", "train.ckpt_every=0"]


def throughput(out: Path, overrides: list[str], windows: int, log_every: int) -> dict:
    """Images/s, data-wait % and compiled graphs of one short training run, its first logged window
    (worker start-up, compilation) dropped; the run's steps in one epoch, so no epoch end falls
    inside a window."""
    steps = log_every * (windows + 1)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never a resumed one
    # each run compiles as a fresh process would: dynamo's caches, and its recompile limit, are per process
    torch.compiler.reset()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["train", "--out", str(out), "--steps", str(steps),
                         f"train.log_every={log_every}", *QUIET, *overrides])
    if code:
        raise RuntimeError(f"training failed ({code}) with {overrides}")
    records = [r for r in read(out / "metrics.jsonl") if r["kind"] == "train"]
    if len(records) != windows + 1:
        raise RuntimeError(f"{out}: {len(records)} log windows where {windows + 1} were planned: an epoch ended "
                           f"inside the run (fewer than batch x {steps} images)")
    measured = records[1:]
    graphs = [r.get("compiled_graphs") for r in records]  # logged by compiled runs only
    return dict(ips=sum(r["images_per_s"] for r in measured) / windows,
                wait=sum(r["data_wait_pct"] for r in measured) / windows,
                graphs=graphs[-1], recompiled=None if graphs[0] is None else graphs[-1] - graphs[0])


def main(argv: list[str] | None = None, emit=None) -> tuple[Table, Table]:
    """``emit(stem, table, label columns)``, where given, gets each table again after each row, so
    that a caller stopped by a time limit keeps every run that finished."""
    emit = emit or (lambda stem, table, labels: None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="mnv2", help="comma-separated")
    p.add_argument("--methods", default="dino", help="comma-separated")
    p.add_argument("--modes", default=DEFAULT_MODES[device], help=f"comma-separated of {', '.join(MODES)}")
    p.add_argument("--loaders", default="auto,pil,nvjpeg,dali,ffcv", help="comma-separated; empty = none")
    p.add_argument("--end-to-end", default="", help="model:mode pairs run with the loaders (default all)")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--out", default="runs/bench/train")
    p.add_argument("--csv", default="", help="path prefix: writes <prefix>_model.csv and <prefix>_loaders.csv")
    p.add_argument("overrides", nargs="*", help="key=value for every run, e.g. data.limit=2000")
    args = p.parse_args(argv)
    models, methods = args.models.split(","), args.methods.split(",")
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            p.error(f"--modes: unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    out = Path(args.out)
    # compiled graphs: at the end of the run; recompiled: built after the first (unmeasured) window
    bound = Table(f"training, synthetic loader (model bound), {device}",
                  ["model", "method", "mode", "images/s", "x fp32 eager", "compiled graphs", "recompiled"])
    synthetic: dict[tuple, float] = {}
    for model in models:
        for method in methods:
            for mode in modes:
                run = throughput(out / f"{model}_{method}_{mode}_synthetic",
                                 [f"model.name={model}", f"method={method}", "data.loader=synthetic",
                                  *MODES[mode], *args.overrides], args.windows, args.log_every)
                synthetic[model, method, mode] = run["ips"]
                base = synthetic.get((model, method, "fp32_eager"))
                bound.add(model, method, mode, run["ips"], run["ips"] / base if base else float("nan"),
                          run["graphs"], run["recompiled"])
                emit("train_model", bound, ["model", "method", "mode"])
    bound.print()
    end_to_end = Table(f"training end to end, {device}",
                       ["model", "method", "mode", "loader", "images/s", "efficiency", "data wait %",
                        "compiled graphs", "recompiled"])
    chosen = {tuple(pair.split(":")) for pair in args.end_to_end.split(",") if pair}
    for (model, method, mode), ips_bound in synthetic.items():
        if chosen and (model, mode) not in chosen:
            continue
        end_to_end.add(model, method, mode, "synthetic", ips_bound, 1.0, 0.0, None, None)
        for spec in filter(None, args.loaders.split(",")):
            loader, _, serial = spec.partition(":")
            if loader != "auto" and missing(loader):
                print(f"skipping {loader}: not installed here")
                continue
            path = out / f"{model}_{method}_{mode}_{loader}{'_serial' if serial else ''}"
            run = throughput(path, [f"model.name={model}", f"method={method}", f"data.loader={loader}",
                                    f"data.overlap={'false' if serial else 'true'}", *MODES[mode],
                                    *args.overrides], args.windows, args.log_every)
            data = json.loads((path / "config.json").read_text())["data"]
            name = f"{spec} ({data['loader']}, {data['workers']} workers)" if loader == "auto" else spec
            end_to_end.add(model, method, mode, name, run["ips"], run["ips"] / ips_bound, run["wait"],
                           run["graphs"], run["recompiled"])
            emit("train_loaders", end_to_end, ["model", "mode", "loader"])
    end_to_end.print()
    if args.csv:
        bound.write_csv(f"{args.csv}_model.csv")
        end_to_end.write_csv(f"{args.csv}_loaders.csv")
    return bound, end_to_end


if __name__ == "__main__":
    main()
