"""Ablation sweeps: a grid of runs on the short schedule, placed on the node, then a table and plots.

Each run is a child process (``python -m sslight.sweep.run``) writing into ``OUT/<run name>``;
its ``result.json`` marks it finished. Scheduling:
- no CUDA device: one run at a time;
- several GPUs: one run per GPU at a time (``CUDA_VISIBLE_DEVICES``);
- one GPU: the first run goes alone and reports its peak memory (``max_memory_reserved``); then as
  many runs share the GPU as fit in the memory that was free before the sweep, at
  ``PACK_MARGIN`` x the largest peak seen so far plus ``CUDA_CONTEXT_GIB`` per process, and no
  more than the CPU cores can feed (``cpu_count // (data.workers + 1)``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from sslight.config import AUTO, ConfigError, as_overrides, read_file
from sslight.interrupt import stop_point, stoppable
from sslight.recipes import build_config, parse
from sslight.sweep.grid import OVERRIDES, RESULT, Planned, parse_grid, plan
from sslight.sweep.report import report

PACK_MARGIN = 1.2
CUDA_CONTEXT_GIB = 1.0


class Slots:
    """Where the next run may start: "cpu", a GPU index as text, or None while all are busy."""

    def __init__(self, workers: int):
        self.gpus = torch.cuda.device_count()
        self.free_gib = torch.cuda.mem_get_info(0)[0] / 2**30 if self.gpus == 1 else 0.0
        self.cpu_cap = max(1, (os.cpu_count() or 1) // (workers + 1))
        self.peak_gib = 0.0  # the largest peak memory of a finished run

    def per_gpu(self) -> int:
        if self.gpus > 1 or not self.peak_gib:
            return 1  # one run per GPU; on one GPU the first run measures alone
        fit = int(self.free_gib // (self.peak_gib * PACK_MARGIN + CUDA_CONTEXT_GIB))
        return max(1, min(fit, self.cpu_cap))

    def free(self, busy: list[str]) -> str | None:
        if not self.gpus:
            return None if busy else "cpu"
        return next((str(g) for g in range(self.gpus) if busy.count(str(g)) < self.per_gpu()), None)


def launch(run: Planned, resume: bool, linear: bool, device: str) -> subprocess.Popen:
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / OVERRIDES).write_text(json.dumps(run.overrides, indent=1) + "\n")
    env = dict(os.environ)
    if device != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = device
    flags = [*(["--resume"] if resume else []), *(["--linear"] if linear else [])]
    cmd = [sys.executable, "-m", "sslight.sweep.run", *flags, str(run.out), *run.overrides]
    with open(run.out / "log.txt", "a") as log:
        # its own session: a Ctrl-C in the terminal reaches the sweep alone, which then stops each run
        # with one SIGTERM (a second signal would end the run at once, without its checkpoint)
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def schedule(todo: list[Planned], resume: bool, linear: bool, slots: Slots) -> list[str]:
    """Runs ``todo`` to completion; returns the names of the runs that failed."""
    pending, active, failed = list(todo), [], []
    try:
        while pending or active:
            stop_point()
            while pending and (device := slots.free([d for _, _, d in active])) is not None:
                run = pending.pop(0)
                where = device if device == "cpu" else f"GPU {device}"
                print(f"sweep: start {run.name} on {where}", file=sys.stderr, flush=True)
                active.append((launch(run, resume and run.started, linear, device), run, device))
            time.sleep(1.0)
            for entry in [a for a in active if a[0].poll() is not None]:
                proc, run, _ = entry
                active.remove(entry)
                if proc.returncode == 0 and run.finished:
                    result = json.loads((run.out / RESULT).read_text())
                    slots.peak_gib = max(slots.peak_gib, result.get("peak_memory_gib", 0.0))
                    print(f"sweep: done {run.name}: kNN top-1 {result['knn_top1']:.1f} "
                          f"({result['wall_min']:.1f} min)", file=sys.stderr, flush=True)
                else:
                    failed.append(run.name)
                    print(f"sweep: FAILED {run.name} (exit {proc.returncode}); log: {run.out / 'log.txt'}",
                          file=sys.stderr, flush=True)
    finally:  # stopped (Ctrl-C, SIGTERM): stop the runs too; RESUME=auto continues them
        for proc, _, _ in active:
            proc.terminate()
        for proc, _, _ in active:
            proc.wait()
    return failed


def sweep(spec: str, base: list[str], out: Path, resume: str, linear: bool, config: str = "") -> int:
    """``config``: a config file (as train's ``--config``) whose values every run starts from."""
    if resume not in ("", AUTO):
        raise ConfigError(f"RESUME={resume!r}: a sweep takes '' or 'auto' (resume interrupted runs)")
    axes = parse_grid(spec)
    values = read_file(config) if config else {}
    parse([], values, config)  # the file's own errors name it
    runs = plan(axes, base, out, as_overrides(values))
    interrupted = [r for r in runs if r.started and not r.finished]
    if interrupted and resume != AUTO:
        raise ConfigError(f"{len(interrupted)} run(s) were interrupted or failed ({interrupted[0].out}); "
                          "pass RESUME=auto to resume them")
    todo = [r for r in runs if not r.finished]
    print(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} finished already, {len(todo)} to run "
          f"into {out}", file=sys.stderr, flush=True)
    workers = build_config(runs[0].overrides).data.workers
    with stoppable("the sweep", "finished runs are kept; continue with --resume auto"):
        failed = schedule(todo, resume == AUTO, linear, Slots(workers)) if todo else []
    report(axes, runs, out)
    return 1 if failed else 0
