"""The training loop, in the shape of DINO's ``main_dino.py``: :func:`prepare` resolves and checks
everything and writes nothing; :func:`train` builds the run's parts, resumes, then runs
:func:`train_one_epoch` until the run is done. One optimiser step is ``train/step.py``."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from loaders import Loader, build_loader, view_groups
from loaders.datasets import Dataset, load_dataset, probe_image_size
from loaders.registry import missing as missing_loader
from loaders.shards import ShardedSplit
from sslight import config as config_mod, distributed, recipes
from sslight.augment import Photometric
from sslight.config import Config, ConfigError
from sslight.eval.knn import knn_evaluation
from sslight.methods import METHODS, Method, method_inputs
from sslight.models import build_backbone
from sslight.precision import dtype_of
from sslight.train import faults
from sslight.train.faults import NonFiniteGuard
from sslight.train.log import CollapseMonitor, CompileCount, LoaderBoundHint, MetricsLog, RunReport, clock, \
    draw_curves, read, traced_from_env
from sslight.train.optim import build_optimizer, lr_wd_schedules, param_groups
from sslight.train.probe import JointProbe
from sslight.train.run_folder import Claim, claim
from sslight.train.state import Position, TrainState
from sslight.train.step import Schedules, Step, seeded_augment


@dataclass
class Run:
    """A prepared run: its resolved config and checked inputs; nothing written yet."""

    cfg: Config
    dataset: Dataset
    device: torch.device
    out: Path
    claim: Claim  # the checkpoint it resumes from, what it replaces, what to tell the user
    dist: distributed.Dist = field(default_factory=distributed.Dist)
    method_inputs: dict = field(default_factory=dict)  # what the method read from files (RoB's teacher)
    notes: list[str] = field(default_factory=list)  # said once when it starts: auto choices, the claim's warnings

    @property
    def resume_from(self) -> Path | None:
        return self.claim.resume_from


def prepare(overrides: list[str], base: dict | None = None, source: str = "") -> Run:
    """Resolve the config (``base``: a config file's values, read from ``source``, under the
    overrides) and check every input; writes nothing in the output folder."""
    request, machine = recipes.parse(overrides, base, source), recipes.Machine.here()
    image_size = probe_image_size(request.cfg.data.path)
    cfg = recipes.resolve(request, machine, image_size)
    install_hint = missing_loader(cfg.data.loader)
    if install_hint:
        raise ConfigError(f"data.loader={cfg.data.loader!r}: not installed here; {install_hint}")
    dist, device = distributed.init(cfg.train.device)
    with distributed.rank0_first(dist):  # rank 0 prepares the dataset and its caches once
        dataset = load_dataset(cfg.data.path)
    if cfg.train.sync_bn and dist.world > 1 and device.type != "cuda":
        raise ConfigError("train.sync_bn=true: SyncBatchNorm needs CUDA devices; allowed on CPU: false")
    per_rank = len(dataset.train.subset(cfg.data.limit, cfg.train.seed)) // dist.world
    if per_rank < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: larger than the {per_rank} training images"
                          + (f" per process ({dist.world} processes)" if dist.world > 1 else ""))
    out = Path(cfg.train.out)
    claimed = distributed.broadcast_object(claim(cfg, out), dist)  # every rank resumes rank 0's choice
    notes = recipes.auto_notes(request, cfg, machine, image_size) + claimed.notes
    return Run(cfg, dataset, device, out, claimed, dist, method_inputs(cfg), notes)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_method(cfg: Config, device: torch.device, inputs: dict) -> Method:
    backbone = build_backbone(cfg.model.name, cfg.model.small_stem, cfg.views.global_size, cfg.model.drop_path_rate)
    method = METHODS[cfg.method](cfg, backbone, cfg.views.n_global, cfg.views.n_local, **inputs)
    if cfg.train.sync_bn:
        method = distributed.convert_sync_bn(method)
    method = method.to(device, memory_format=torch.channels_last)
    if cfg.train.compile:
        # compiled per resolution group: each backbone sees exactly two static shapes
        for module in method.modules():
            if module is not method and hasattr(module, "backbone"):
                module.backbone.compile(dynamic=False)
    return method


@dataclass
class Parts:
    """What training is made of, built once per run by :func:`build`."""

    state: TrainState
    loader: Loader
    step: Step  # called as step(batch, ctx); wrapped by the trace hook when that is on
    schedules: Schedules
    steps_per_epoch: int
    max_steps: int
    hint: LoaderBoundHint
    collapse: CollapseMonitor
    compiles: CompileCount


def training_loader(run: Run, workers: int) -> Loader:
    cfg, t = run.cfg, run.cfg.train
    return build_loader(cfg.data.loader, run.dataset.train.subset(cfg.data.limit, t.seed), view_groups(cfg.views),
                        t.batch_size, t.seed, run.device, workers, run.dist.rank, run.dist.world, cfg.data.overlap)


def resumed_loader(run: Run, parts: Parts, at: Position, notes: Console) -> Loader:
    """A packed dataset's epoch is cut into one stream per loader worker (loaders.shard_order): a run
    resumed mid-epoch with another worker count reads with the checkpoint's count, so that it
    trains on exactly the samples the interrupted epoch had left."""
    if not at.batch_in_epoch or at.workers in (None, run.cfg.data.workers) or \
            not isinstance(run.dataset.train, ShardedSplit):
        return parts.loader
    notes.print(f"data.workers={at.workers}, as in the run that wrote the checkpoint: a packed dataset's epoch "
                f"is read in one stream per worker, so this resumes it exactly", soft_wrap=True)
    return training_loader(run, at.workers)


def build(run: Run) -> Parts:
    cfg, t, device, dist = run.cfg, run.cfg.train, run.device, run.dist
    dtype = dtype_of(t.precision)
    method = build_method(cfg, device, run.method_inputs)
    loader = training_loader(run, cfg.data.workers)
    steps_per_epoch = loader.batches_per_epoch()
    total = t.epochs * steps_per_epoch
    schedules = Schedules(*lr_wd_schedules(cfg, steps_per_epoch, dist.world),
                          METHODS[cfg.method].schedules(cfg, total, steps_per_epoch))
    optimizer = build_optimizer(cfg.optim.name, param_groups(method.trainable()), cfg.optim.momentum,
                                cfg.optim.eta, device)
    n_classes = len(run.dataset.classes)
    probe = JointProbe(method.backbone.num_features, n_classes, cfg.probe.lr, device, dist, dtype) \
        if cfg.probe.enabled and n_classes else None
    photometric = Photometric(METHODS[cfg.method].photometry(cfg.views.n_global, cfg.views.n_local),
                              cfg.views.global_size, device, dtype)
    augment = faults.poisoned_from_env(seeded_augment(photometric, t.seed, device))
    guard = NonFiniteGuard(t.skip_nonfinite, device)
    monitor = CollapseMonitor(METHODS[cfg.method].collapse_rank_warning)
    step = Step(method, distributed.wrap(method, dist), optimizer, schedules, augment, guard, probe,
                cfg.optim.clip_grad, dtype, monitor)
    state = TrainState(method, optimizer, probe, guard, device, replacing=list(run.claim.replacing))
    return Parts(state, loader, traced_from_env(step, method, dist.rank),
                 schedules, steps_per_epoch, t.steps or total,
                 LoaderBoundHint(cfg.data.loader, cfg.data.workers, len(os.sched_getaffinity(0))), monitor,
                 CompileCount(t.compile))


def train(run: Run, console: Console | None = None) -> dict:
    """Train; SIGTERM or Ctrl-C ends it with a checkpoint at the current step and raises
    :class:`faults.Interrupted`. ``console`` takes the notes and warnings (stderr); the run's
    report (header, progress, footer) goes to stdout. Returns the last epoch's record."""
    notes = console or Console(stderr=True, quiet=not run.dist.main)
    started = time.perf_counter()
    with faults.StopSignals(run.device) as signals:
        write_run_files(run, notes)
        seed_everything(run.cfg.train.seed)
        parts = build(run)
        report = RunReport(Console(quiet=not run.dist.main), notes, run.cfg.train.epochs, parts.steps_per_epoch,
                           parts.max_steps)
        log = MetricsLog(run.out, enabled=run.dist.main)
        say_header(run, parts, log, report)
        at = Position()
        if run.resume_from is not None:
            at = parts.state.restore(run.resume_from)
            notes.print(f"resumed from {run.resume_from} at epoch {at.epoch}, step {at.step}", soft_wrap=True)
            parts.loader = resumed_loader(run, parts, at, notes)
        summary: dict = dict(out=str(run.out))
        if run.resume_from is None and run.cfg.eval.at_start and run.dataset.test is not None and run.dist.main:
            init = evaluate(run, parts)["knn_top1"]
            log.write("init", 0, knn_top1=init)
            report.say(f"kNN top-1 at initialisation: {init:.2f}")
        try:
            while at.epoch < run.cfg.train.epochs and at.step < parts.max_steps:
                loss_sum, interrupted = train_one_epoch(run, parts, at, log, signals, report)
                summary.update(end_epoch(run, parts, at, loss_sum, interrupted, log, report))
        finally:
            log.close()
    summary.update(gain(run, summary, report))
    say_footer(run, summary, time.perf_counter() - started, report)
    return summary


def say_header(run: Run, parts: Parts, log: MetricsLog, report: RunReport) -> None:
    """What the run is, where it writes and what it will not do, before any step."""
    cfg, out = run.cfg, run.out
    limit = f", stopping at step {parts.max_steps}" if parts.max_steps < cfg.train.epochs * parts.steps_per_epoch \
        else ""
    processes = f" x {run.dist.world} processes" if run.dist.world > 1 else ""
    tb = f"TensorBoard: {out / 'tb'}" if log.tb is not None else "TensorBoard off (pip install 'sslight[tensorboard]')"
    report.say(f"sslight: {cfg.model.name} {cfg.method}, recipe {cfg.recipe}, schedule {cfg.schedule}: "
               f"{cfg.train.epochs} epochs x {parts.steps_per_epoch} steps/epoch{limit}, "
               f"batch {cfg.train.batch_size}{processes}")
    images = min(cfg.data.limit or len(run.dataset.train), len(run.dataset.train))
    packed = f" in {len(run.dataset.train.shards)} shards" if isinstance(run.dataset.train, ShardedSplit) else ""
    workers = f"{cfg.data.workers} worker{'s' * (cfg.data.workers != 1)}"
    report.say(f"  data {cfg.data.path or 'CIFAR-10'} ({images} training images{packed}); {run.device}, "
               f"loader {cfg.data.loader} ({workers}), precision {cfg.train.precision}"
               + (", compiled" if cfg.train.compile else ""))
    report.say(f"  out {out}: checkpoints, config.json, metrics.jsonl, curves.png; {tb}")
    if run.dataset.test is None:
        report.warn("evaluation skipped: the dataset has no labelled test/val split (kNN needs train/ and "
                    "val/ or test/ class folders)")


def say_footer(run: Run, summary: dict, seconds: float, report: RunReport) -> None:
    """Where the run's result is and what to do with it."""
    if "checkpoint" not in summary:
        return
    out = run.out
    labelled = "" if run.dataset.test is not None else " --data A_LABELLED_FOLDER"
    report.say(f"done in {clock(seconds)}: last checkpoint {summary['checkpoint']}")
    report.say(f"next: sslight eval --ckpt {out}{labelled}  |  sslight export --ckpt {out}  |  "
               f"sslight plot {out}")


def gain(run: Run, summary: dict, report: RunReport) -> dict:
    """What training gained on kNN top-1 since initialisation, where both were measured (the
    start's measurement is in metrics.jsonl, also for a resumed run)."""
    path = run.out / "metrics.jsonl"
    if "knn_top1" not in summary or not run.dist.main or not path.exists():
        return {}
    init = next((r["knn_top1"] for r in read(path) if r["kind"] == "init"), None)
    if init is None:
        return {}
    points = summary["knn_top1"] - init
    report.say(f"kNN top-1: {init:.2f} at initialisation -> {summary['knn_top1']:.2f} after training "
               f"({points:+.2f} points)")
    return dict(knn_top1_init=init, knn_gain=points)


def write_run_files(run: Run, console: Console) -> None:
    """By rank 0: the run's notes, the resolved config (every auto value filled in), a fresh metrics
    log for a fresh start, and the list of excluded files."""
    if not run.dist.main:
        return
    for note in run.notes:
        console.print(note, soft_wrap=True, highlight=False)  # one line, however long its paths
    run.out.mkdir(parents=True, exist_ok=True)
    if run.resume_from is None:
        (run.out / "metrics.jsonl").unlink(missing_ok=True)
    tmp = run.out / ".config.json.tmp"
    tmp.write_text(json.dumps(config_mod.to_dict(run.cfg), indent=2) + "\n")
    tmp.replace(run.out / "config.json")
    if run.dataset.excluded:
        listing = run.out / "excluded_files.txt"
        listing.write_text("".join(f"{f}\t{r}\n" for f, r in sorted(run.dataset.excluded.items())))
        console.print(f"[yellow]warning: excluded {len(run.dataset.excluded)} unreadable files; list in {listing}")


def train_one_epoch(run: Run, parts: Parts, at: Position, log: MetricsLog, signals: faults.StopSignals,
                    report: RunReport) -> tuple[torch.Tensor, int]:
    """The rest of epoch ``at.epoch``, or up to the step limit or a stop signal, moving ``at``.
    Returns the epoch's summed loss and the signal that stopped it (0 if none)."""
    t, state = run.cfg.train, parts.state
    state.method.train()
    if state.probe is not None:
        state.probe.start_epoch()
    resumed = at.batch_in_epoch > 0
    if not resumed:
        state.guard.skipped_in_epoch = 0
    loss_sum = torch.full((), at.epoch_loss_sum if resumed else 0.0, device=run.device, dtype=torch.float64)
    window, interrupted = Window(run.device), 0
    with report.epoch(at.epoch, at.step, at.batch_in_epoch):
        for batch in window.timed(parts.loader.epoch(at.epoch, at.batch_in_epoch)):
            loss, skipped = parts.step(batch, parts.schedules.context(at.epoch, at.step))
            if skipped:
                report.warn(f"warning: {skipped}")
                window.skipped += 1
            else:
                loss_sum += loss
                window.loss += loss
            at.step, at.batch_in_epoch, window.steps = at.step + 1, at.batch_in_epoch + 1, window.steps + 1
            log_now = (at.step % t.log_every == 0 or at.batch_in_epoch == parts.steps_per_epoch
                       or at.step >= parts.max_steps)
            report.stepped(at.step)
            if log_now:
                log_window(run, parts, at, window, batch.size, log, report)
            interrupted = signals.requested(sync_point=log_now)
            if (t.ckpt_every and at.step % t.ckpt_every == 0 and at.batch_in_epoch < parts.steps_per_epoch
                    and not interrupted):
                state.save(run.cfg, run.out, run.dist, at.epoch, at.step, at.batch_in_epoch, loss_sum)
            if at.step >= parts.max_steps or interrupted:
                break
    return loss_sum, interrupted


class Window:
    """The steps since the last log line: their summed loss (on the device, read only at log
    steps), how many there were and were skipped, and the time spent waiting for data."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        self.start, self.steps, self.skipped, self.wait = time.perf_counter(), 0, 0, 0.0
        self.loss.zero_()

    def timed(self, batches):
        """``batches``, adding the time each one took to arrive to the data wait."""
        batches = iter(batches)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.wait += time.perf_counter() - start
            if batch is None:
                return
            yield batch


def log_window(run: Run, parts: Parts, at: Position, window: Window, batch_size: int, log: MetricsLog,
               report: RunReport) -> None:
    """Writes the window's record (the one host sync of a log step), reports it, says when the
    loader bounds the step, and starts the next window."""
    trained, shown = window.steps - window.skipped, None
    elapsed = time.perf_counter() - window.start
    if trained:
        parts.state.guard.check(at.epoch)  # raises on a non-finite loss since the last check
        loss = (distributed.mean_across_ranks(window.loss) / trained).item()  # averaged over ranks
        ips = window.steps * batch_size * run.dist.world / elapsed
        wait = 100 * window.wait / elapsed
        lr = float(parts.schedules.lr[at.step - 1])
        collapse = parts.collapse.read()
        shown = dict(loss=f"loss {loss:.4f}", lr=f"lr {lr:.2e}", ips=f"{ips:.0f} img/s",
                     wait=f"data-wait {wait:.0f}%", rank=f"rank {collapse['rank_fraction']:.0%}" if collapse else "")
        log.write("train", at.step, epoch=at.epoch, loss=loss, lr=lr, images_per_s=ips, data_wait_pct=wait,
                  **collapse, **parts.compiles.read())
        for warning in (parts.hint.check(wait), parts.collapse.warning(collapse)):
            if warning:
                report.warn(warning)
    report.logged(at.step, window.steps, elapsed, shown)
    window.reset()


def end_epoch(run: Run, parts: Parts, at: Position, loss_sum: torch.Tensor, interrupted: int, log: MetricsLog,
              report: RunReport) -> dict:
    """The epoch's record (marked partial, with its batches, when the epoch stopped early), its
    checkpoint, curves.png and, when due, its evaluation; after a stop signal, raises
    :class:`faults.Interrupted` once the checkpoint is written."""
    cfg, state = run.cfg, parts.state
    trained = max(at.batch_in_epoch - state.guard.skipped_in_epoch, 1)
    record = dict(epoch=at.epoch, loss=(distributed.mean_across_ranks(loss_sum) / trained).item(), steps=at.step,
                  **parts.compiles.read())
    probe_top1 = state.probe.train_top1() if state.probe is not None else None
    if probe_top1 is not None:
        record["probe_train_top1"] = probe_top1
    finished = at.batch_in_epoch == parts.steps_per_epoch
    if not finished:
        record.update(partial=True, batches=at.batch_in_epoch)
    saved = state.save(cfg, run.out, run.dist, at.epoch + 1 if finished else at.epoch, at.step,
                       0 if finished else at.batch_in_epoch, torch.zeros_like(loss_sum) if finished else loss_sum)
    if interrupted:
        log.write("epoch", at.step, **record)
        if run.dist.main:
            draw_curves(run.out, report)
        distributed.barrier()  # no rank exits (and so no launcher kills rank 0) before the checkpoint is written
        raise faults.Interrupted(interrupted, f"stopped by {signal.Signals(interrupted).name} at step {at.step}; "
                                 f"checkpoint {saved}; continue with --resume auto")
    last = at.step >= parts.max_steps or at.epoch + 1 == cfg.train.epochs
    due = (cfg.eval.every and (at.epoch + 1) % cfg.eval.every == 0) or last
    if run.dataset.test is not None and run.dist.main and due:
        try:
            record.update(evaluate(run, parts))
        except faults.Interrupted:
            log.write("epoch", at.step, **record)  # the epoch is done and saved; only its kNN is lost
            raise
    log.write("epoch", at.step, **record)
    report.say(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    if run.dist.main:
        draw_curves(run.out, report)
    at.epoch, at.batch_in_epoch, at.epoch_loss_sum = at.epoch + 1, 0, 0.0
    return dict(record, checkpoint=str(saved)) if saved else record


def evaluate(run: Run, parts: Parts) -> dict:
    """kNN top-1 of the student backbone on the test split, and the joint probe's top-1."""
    top1, queries, labels = knn_evaluation(parts.state.method.backbone, run.dataset, run.cfg, run.device)
    result = dict(knn_top1=top1)
    if parts.state.probe is not None:
        result["probe_top1"] = parts.state.probe.top1(queries, labels)
    return result
