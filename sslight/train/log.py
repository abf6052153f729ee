"""What a run reports: ``metrics.jsonl`` (and TensorBoard when installed), the live progress bar,
and the per-rank trace that checks data-parallel runs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from torch import nn


class MetricsLog:
    """One JSON object per line in ``metrics.jsonl``."""

    def __init__(self, out: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        record = dict(kind=kind, step=step, time=round(time.time(), 3), **values)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# What a progress line shows, in this order; a terminal too narrow for all of it drops parts in
# DROPPED_FIRST's order, so the epoch, the step and the ETA are never cut.
SHOWN = ("epoch", "step", "loss", "lr", "ips", "wait", "rank", "eta")
DROPPED_FIRST = ("lr", "wait", "ips", "rank", "loss")


def fitted(parts: dict[str, str], width: int | None) -> str:
    """``parts`` (keys of SHOWN) joined in SHOWN's order, dropping parts while wider than ``width``."""
    keys = [k for k in SHOWN if parts.get(k)]
    text = "  ".join(parts[k] for k in keys)
    for key in DROPPED_FIRST:
        if width is None or len(text) <= width:
            break
        keys = [k for k in keys if k != key]
        text = "  ".join(parts[k] for k in keys)
    return text


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Eta:
    """The time left in training at the speed of the log windows so far; the first window, which
    holds the start-up (workers, compilation), stops counting once there is another."""

    def __init__(self):
        self.windows: list[tuple[int, float]] = []

    def add(self, steps: int, seconds: float) -> None:
        self.windows.append((steps, seconds))

    def left(self, steps: int) -> str:
        counted = self.windows[1:] or self.windows
        done, seconds = sum(w[0] for w in counted), sum(w[1] for w in counted)
        return f"ETA {clock(seconds / done * steps)}" if done else "ETA -:--:--"


class RunReport:
    """What a run shows on stdout, rank 0 only: the start header; while it trains, in a terminal a
    rich bar per epoch, elsewhere (nohup, SLURM, CI, a file) one plain line per log step, never a
    redrawn frame; an epoch line at each epoch's end; the end footer. Both say epoch e/E, step s/S
    (optimiser steps of the whole run), loss, lr, images/s, data-wait, the collapse indicator's rank
    and the training time left. Notes and warnings go to ``notes`` (stderr), as errors do."""

    def __init__(self, console: Console, notes: Console, epochs: int, steps_per_epoch: int, max_steps: int):
        self.console, self.notes = console, notes
        self.epochs = min(epochs, math.ceil(max_steps / steps_per_epoch))
        self.max_steps, self.steps_per_epoch = max_steps, steps_per_epoch
        self.eta = Eta()
        self.parts: dict[str, str] = dict(eta=self.eta.left(max_steps))
        self.bar: Progress | None = None

    def say(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False, markup=False)

    def warn(self, text: str) -> None:
        self.notes.print(f"[yellow]{escape(text)}", soft_wrap=True, highlight=False)

    @contextmanager
    def epoch(self, epoch: int, step: int, batch_in_epoch: int):
        """Around one epoch's steps: its bar, in a terminal."""
        self.parts.update(epoch=f"epoch {epoch + 1}/{self.epochs}", step=f"step {step}/{self.max_steps}")
        if not self.console.is_terminal:
            yield
            return
        self.bar = Progress(TextColumn("{task.fields[head]}", markup=False), BarColumn(bar_width=10),
                            TextColumn("{task.fields[tail]}", markup=False), console=self.console)
        with self.bar:
            self.bar.add_task("train", total=self.steps_per_epoch, completed=batch_in_epoch, **self.texts())
            yield
        self.bar = None

    def texts(self) -> dict[str, str]:
        """The bar's two texts: the epoch before the bar, the rest after it, fitted to the terminal
        (the bar and the two column gaps take 12 columns; the last column is left free)."""
        head = self.parts["epoch"]
        rest = {k: v for k, v in self.parts.items() if k != "epoch"}
        return dict(head=head, tail=fitted(rest, self.console.width - len(head) - 13))

    def stepped(self, step: int) -> None:
        """After each step (before :meth:`logged` at a log step)."""
        self.parts["step"] = f"step {step}/{self.max_steps}"
        if self.bar is not None:
            self.bar.update(self.bar.task_ids[0], advance=1, **self.texts())

    def logged(self, step: int, steps: int, seconds: float, shown: dict[str, str] | None) -> None:
        """A log step: ``steps`` steps took ``seconds``; ``shown``: the window's loss, lr, ips,
        wait and rank texts (None when every step of the window was skipped)."""
        self.eta.add(steps, seconds)
        self.parts.update(shown or {}, eta=self.eta.left(self.max_steps - step))
        if self.bar is None:
            self.say(fitted(self.parts, None))
        else:
            self.bar.update(self.bar.task_ids[0], **self.texts())


def draw_curves(out: Path, report: RunReport) -> None:
    """``curves.png`` in the run folder, redrawn from its metrics.jsonl (:mod:`sslight.plot`); a
    picture is never worth a run: any failure to draw is one warning line."""
    try:
        from sslight.plot import save_curves

        save_curves([out], out / "curves.png")
    except Exception as exc:  # noqa: BLE001 (whatever drawing raises, training goes on)
        report.warn(f"warning: {out / 'curves.png'} not drawn ({type(exc).__name__}: {exc})")


class LoaderBoundHint:
    """One line, once per run, when a whole log window waited on data for more than
    ``THRESHOLD`` % of its time; the run's first window, which holds the loader's start-up,
    does not count."""

    THRESHOLD = 10.0

    def __init__(self, loader: str, workers: int, cores: int):
        self.loader, self.workers, self.cores = loader, workers, cores
        self.windows, self.said = 0, False

    def check(self, wait_pct: float) -> str | None:
        self.windows += 1
        if self.said or self.windows == 1 or wait_pct <= self.THRESHOLD:
            return None
        self.said = True
        tries = [] if self.loader == "nvjpeg" else ["LOADER=nvjpeg"]
        if self.workers < self.cores:
            tries.append(f"more workers (ARGS=data.workers={self.workers + 1}; {self.cores} cores here)")
        tries.append("a smaller recipe (fewer or smaller local views)")
        return f"loader-bound: data-wait {wait_pct:.0f}% over the last log window; try " + " / ".join(tries)


class CollapseMonitor:
    """Whether the student's representation is collapsing, read from the backbone features of the
    last step's first student view, at log steps only (the step just keeps a reference):
    - ``feature_std``: the per-dimension standard deviation of the L2-normalised features over the
      batch, times sqrt(d): 1 when the batch spreads evenly over all d dimensions (std 1/sqrt(d)),
      0 when every image maps to the same direction;
    - ``rankme``: the effective rank of the batch's features (RankMe, Garrido et al. 2023: the
      exponential of the entropy of the normalised singular values), at most min(batch, d);
      ``rank_fraction`` is it over that bound.
    A warning, once per run, when the median ``rank_fraction`` of the last ``WINDOW`` log steps
    falls below ``rank_warning`` (the method's ``collapse_rank_warning``, as healthy ranks differ
    between methods; the median, as one batch can dip where the run is healthy): collapse in
    these runs is dimensional (the batch spans a few directions) long before it is complete, and
    feature_std stays near its healthy value through it (BENCHMARKS.md, collapse traces)."""

    WINDOW = 10

    def __init__(self, rank_warning: float):
        self.rank_warning = rank_warning
        self.features: torch.Tensor | None = None
        self.recent: deque[float] = deque(maxlen=self.WINDOW)
        self.warned = False

    def keep(self, features: torch.Tensor) -> None:
        self.features = features.detach()  # no graph kept alive between steps; no host sync

    @torch.no_grad()
    def read(self) -> dict[str, float]:
        if self.features is None:
            return {}
        f = self.features.float()
        std = F.normalize(f, dim=1).std(0).mean() * math.sqrt(f.shape[1])
        p = torch.linalg.svdvals(f)
        p = p / p.sum().clamp_min(1e-12)
        rank = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()).item()
        return dict(feature_std=std.item(), rankme=rank, rank_fraction=rank / min(f.shape))

    def warning(self, stats: dict[str, float]) -> str | None:
        if self.warned or not stats:
            return None
        self.recent.append(stats["rank_fraction"])
        median = statistics.median(self.recent)
        if len(self.recent) < self.WINDOW or median >= self.rank_warning:
            return None
        self.warned = True
        return (f"collapse: the features' effective rank is {stats['rankme']:.1f}, the median over the last "
                f"{self.WINDOW} log steps {median:.1%} of its bound (warning below {self.rank_warning:.0%}); "
                f"feature spread {stats['feature_std']:.2f} of the collapse-free one. The student maps the "
                "batch onto a few directions: for DINO check the centring and the teacher temperature, "
                "for any method the learning rate")


class CompileCount:
    """The graphs ``torch.compile`` has built since the run started (dynamo's count), logged with
    every record of a compiled run: it builds one graph per backbone and resolution group (a
    graph break adds one) in its first steps and none after. A count that grows later means
    recompiles, and past dynamo's recompile limit the backbone runs eager."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.start = self.graphs() if enabled else 0

    @staticmethod
    def graphs() -> int:
        from torch._dynamo.utils import counters

        return counters["stats"]["unique_graphs"]

    def read(self) -> dict[str, int]:
        return dict(compiled_graphs=self.graphs() - self.start) if self.enabled else {}


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Tracer:
    """SSLIGHT_TRACE_DIR=dir writes dir/rank<R>.jsonl with, per step, the sample indices of the
    batch and digests of the parameters and of the method's own state (DINO centre, queues).
    Replicas in sync have equal digests at every step; costs a host copy of the model per step."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, step: int, batch, method: nn.Module) -> None:
        record = dict(step=step, indices=batch.indices.tolist(), params=digest(method.parameters()),
                      state=digest(b for _, b in sorted(method.named_buffers(recurse=False))))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def traced_from_env(step, method: nn.Module, rank: int):
    """``step`` (a callable of (batch, ctx)), writing the trace after each call when
    SSLIGHT_TRACE_DIR is set; ``step`` itself otherwise, so tracing costs nothing when off."""
    folder = os.environ.get("SSLIGHT_TRACE_DIR")
    if not folder:
        return step
    tracer = Tracer(Path(folder) / f"rank{rank}.jsonl")

    def traced(batch, ctx):
        result = step(batch, ctx)
        tracer.write(ctx.step + 1, batch, method)
        return result

    return traced
