"""The training loop: views -> photometric augmentation -> method step -> schedules, logs, checkpoints."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from loaders import build_loader, view_groups
from loaders.registry import missing as missing_loader
from loaders.datasets import Dataset, load_dataset, common_image_size
from sslight import checkpoint, config as config_mod, distributed, faults, teacher, trace
from sslight.augment import Photometric, method_photometry
from sslight.config import AUTO, Config, ConfigError
from sslight.knn import extract, knn_top1
from sslight.methods import METHODS, StepContext
from sslight.metrics import MetricsLog
from sslight.models import build_backbone
from sslight.optim import build_optimizer, param_groups, set_schedule
from sslight.progress import epoch_bar
from sslight.recipes import resolve_runtime, resolve_sizes
from sslight.schedules import cosine, linear_then_constant


@dataclass
class Run:
    """Everything a prepared run needs; built by :func:`prepare`, consumed by :func:`train`."""

    cfg: Config
    dataset: Dataset
    device: torch.device
    out: Path
    resume_from: Path | None
    dist: distributed.Dist = field(default_factory=distributed.Dist)


def default_out(cfg: Config) -> str:
    return f"runs/{cfg.model.name}_{cfg.method}_{cfg.recipe}"


def prepare(cfg: Config, user_keys: set[str]) -> Run:
    """Resolve every auto value and check the inputs; writes nothing in the output folder."""
    install_hint = missing_loader(cfg.data.loader)
    if install_hint:
        raise ConfigError(f"data.loader={cfg.data.loader!r}: not installed here; {install_hint}")
    resolve_runtime(cfg, torch.cuda.is_available())
    dist, device = distributed.init(cfg.train.device)
    with distributed.rank0_first(dist):  # rank 0 prepares the dataset and its caches once
        dataset = load_dataset(cfg.data.path)
    resolve_sizes(cfg, user_keys, common_image_size(dataset.train))
    if cfg.train.sync_bn and dist.world > 1 and device.type != "cuda":
        raise ConfigError("train.sync_bn=true: SyncBatchNorm needs CUDA devices; allowed on CPU: false")
    if cfg.train.out == AUTO:
        cfg.train.out = default_out(cfg)
    out = Path(cfg.train.out)
    resume_from = None
    if cfg.train.resume == AUTO:
        resume_from = checkpoint.latest(out) if out.is_dir() else None
    elif cfg.train.resume:
        resume_from = Path(cfg.train.resume)
        if not resume_from.is_file():
            raise ConfigError(f"train.resume={cfg.train.resume!r}: no such checkpoint file")
    resume_from = distributed.broadcast_object(resume_from, dist)  # every rank resumes rank 0's choice
    per_rank = len(dataset.train.subset(cfg.data.limit, cfg.train.seed)) // dist.world
    if per_rank < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: larger than the {per_rank} training images"
                          + (f" per process ({dist.world} processes)" if dist.world > 1 else ""))
    teacher.check(cfg)
    return Run(cfg, dataset, device, out, resume_from, dist)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """The photometric RNG seed of one step, so a resumed run draws the same augmentations."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Schedules:
    def __init__(self, cfg: Config, steps_per_epoch: int, world: int = 1):
        o, total = cfg.optim, cfg.train.epochs * steps_per_epoch
        lr = o.lr * cfg.train.batch_size * world / 256  # linear scaling rule, base lr per 256 images
        self.lr = cosine(lr, o.min_lr, total, int(o.warmup_epochs * steps_per_epoch))
        self.wd = cosine(o.weight_decay, o.weight_decay_end, total)
        if cfg.method == "dino":
            self.momentum = cosine(cfg.dino.momentum_teacher, 1.0, total)
        else:
            self.momentum = np.full(total, cfg.moco.momentum)
        d = cfg.dino
        self.teacher_temp = linear_then_constant(d.warmup_teacher_temp, d.teacher_temp, total,
                                                 d.warmup_teacher_temp_epochs * steps_per_epoch)


def build_method(cfg: Config, device: torch.device):
    backbone = build_backbone(cfg.model.name, cfg.model.small_stem, cfg.views.global_size)
    method = METHODS[cfg.method](cfg, backbone, cfg.views.n_global, cfg.views.n_local)
    if cfg.train.sync_bn:
        method = distributed.convert_sync_bn(method)
    method = method.to(device, memory_format=torch.channels_last)
    if cfg.train.compile:
        # compiled per resolution group: each backbone sees exactly two static shapes
        for module in method.modules():
            if module is not method and hasattr(module, "backbone"):
                module.backbone.compile(dynamic=False)
    return method


def train(run: Run, console: Console | None = None) -> dict:
    """Train; SIGTERM or Ctrl-C ends it with a checkpoint at the current step and raises
    :class:`faults.Interrupted`."""
    with faults.StopSignals(run.device) as signals:
        return train_until_stopped(run, signals, console)


def train_until_stopped(run: Run, signals: faults.StopSignals, console: Console | None = None) -> dict:
    cfg, device, dist = run.cfg, run.device, run.dist
    console = console or Console(stderr=True, quiet=not dist.main)
    t = cfg.train
    if dist.main:
        run.out.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run.out)
    if run.dataset.excluded and dist.main:
        listing = run.out / "excluded_files.txt"
        listing.write_text("".join(f"{f}\t{r}\n" for f, r in sorted(run.dataset.excluded.items())))
        console.print(f"[yellow]warning: excluded {len(run.dataset.excluded)} unreadable files; "
                      f"list in {listing}")
    seed_everything(t.seed)

    dtype = torch.bfloat16 if t.precision == "bf16" else torch.float32
    groups = view_groups(cfg.views)
    method = build_method(cfg, device)
    ssl_split = run.dataset.train.subset(cfg.data.limit, t.seed)
    loader = build_loader(cfg.data.loader, ssl_split, groups, t.batch_size, t.seed, device, cfg.data.workers,
                          dist.rank, dist.world)
    steps_per_epoch = loader.batches_per_epoch()
    sched = Schedules(cfg, steps_per_epoch, dist.world)
    model = distributed.wrap(method, dist)  # the loss is the forward pass; gradients averaged over ranks
    optimizer = build_optimizer(cfg.optim.name, param_groups(method.trainable()), cfg.optim.momentum,
                                cfg.optim.eta, device)
    n_classes = len(run.dataset.classes)
    probe = probe_opt = None
    if cfg.probe.enabled and n_classes:
        probe = torch.nn.Linear(method.backbone.num_features, n_classes).to(device)
        probe_opt = torch.optim.SGD(probe.parameters(), lr=cfg.probe.lr, momentum=0.9)
    probe_model = distributed.wrap(probe, dist) if probe is not None else None
    guard = faults.NonFiniteGuard(t.skip_nonfinite, device)
    tracer = trace.from_env(dist.rank)

    epoch, step, skip = 0, 0, 0
    resumed_loss_sum = 0.0  # the finished part of a resumed epoch, so epoch means stay exact
    if run.resume_from is not None:
        state = checkpoint.load(run.resume_from, device)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        if probe is not None and state.get("probe"):
            probe.load_state_dict(state["probe"])
            probe_opt.load_state_dict(state["probe_opt"])
        epoch, step, skip = state["epoch"], state["step"], state["batch_in_epoch"]
        resumed_loss_sum = state["epoch_loss_sum"]
        guard.skipped_in_epoch = state.get("skipped_in_epoch", 0)
        torch.set_rng_state(state["rng"]["torch"])
        console.print(f"resumed from {run.resume_from} at epoch {epoch}, step {step}")

    def save(epoch_: int, batch_in_epoch: int, epoch_loss_sum: torch.Tensor) -> Path | None:
        """Rank 0 writes; every rank takes part in the checks before it (collectives)."""
        guard.check(epoch_)  # raises before a non-finite update could be saved
        epoch_loss_sum = distributed.mean_across_ranks(epoch_loss_sum).item()
        if not dist.main:
            return None
        state = dict(method=method.state_dict(), optimizer=optimizer.state_dict(),
                     probe=probe.state_dict() if probe is not None else None,
                     probe_opt=probe_opt.state_dict() if probe_opt is not None else None,
                     epoch=epoch_, step=step, batch_in_epoch=batch_in_epoch, epoch_loss_sum=epoch_loss_sum,
                     skipped_in_epoch=guard.skipped_in_epoch if batch_in_epoch else 0,
                     rng=dict(torch=torch.get_rng_state()), config=config_mod.to_dict(cfg))
        try:
            return checkpoint.save(state, run.out, epoch_, step)
        except OSError as exc:
            previous = checkpoint.latest(run.out)
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint"
            raise faults.TrainingStopped(f"checkpoint at step {step} not written: {exc.strerror or exc} "
                                         f"({run.out}); {kept}") from exc

    photometric = Photometric(method_photometry(cfg.method, cfg.views.n_global, cfg.views.n_local),
                              cfg.views.global_size, device, dtype)
    first_view = np.cumsum([0] + [g.n for g in groups])[:-1].tolist()
    generator = torch.Generator(device=device)
    log = MetricsLog(run.out, enabled=dist.main)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == torch.bfloat16 \
        else contextlib.nullcontext
    max_steps = t.steps or t.epochs * steps_per_epoch
    summary: dict = dict(out=str(run.out))
    stopped = step >= max_steps
    interrupted = 0  # the signal that stopped the run

    while epoch < t.epochs and not stopped:
        method.train()
        loss_sum = torch.full((), resumed_loss_sum if skip else 0.0, device=device, dtype=torch.float64)
        window_loss = torch.zeros((), device=device)
        probe_correct = torch.zeros((), device=device)
        seen, wait_time, window_start, window_steps, window_skipped = 0, 0.0, time.perf_counter(), 0, 0
        if not skip:
            guard.skipped_in_epoch = 0
        shown = dict(loss="-", lr="-", ips="-", wait="-")
        with epoch_bar(console) as bar:
            task = bar.add_task("train", total=steps_per_epoch, completed=skip, epoch=epoch, **shown)
            batches = iter(loader.epoch(epoch, skip))
            batch_in_epoch = skip
            while True:
                fetch_start = time.perf_counter()
                batch = next(batches, None)
                wait_time += time.perf_counter() - fetch_start
                if batch is None:
                    break
                ctx = StepContext(epoch, step, float(sched.teacher_temp[step]), float(sched.momentum[step]))
                set_schedule(optimizer, float(sched.lr[step]), float(sched.wd[step]))
                generator.manual_seed(step_seed(t.seed, step))
                views = [photometric(v, first, generator) for v, first in zip(batch.views, first_view)]
                views = faults.poison_from_env(views, step + 1)
                snapshot = guard.snapshot(method)
                with autocast():
                    loss, terms, feats = model(views, ctx)
                guard.record(step + 1, loss, terms)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                skipped = guard.check(epoch) if guard.per_step else None
                if skipped:
                    console.print(f"[yellow]warning: {skipped}")
                    guard.restore(method, snapshot)
                    window_skipped += 1
                else:
                    if cfg.optim.clip_grad:
                        torch.nn.utils.clip_grad_norm_([p for m in method.trainable() for p in m.parameters()],
                                                       cfg.optim.clip_grad)
                    method.before_optimizer_step(ctx)
                    optimizer.step()
                    method.after_optimizer_step(ctx)
                    if probe is not None:
                        with autocast():
                            logits = probe_model(feats.detach())
                        probe_opt.zero_grad(set_to_none=True)
                        F.cross_entropy(logits.float(), batch.labels).backward()
                        probe_opt.step()
                        probe_correct += (logits.argmax(1) == batch.labels).sum()
                        seen += batch.size
                    loss_sum += loss.detach()
                    window_loss += loss.detach()
                if tracer is not None:
                    tracer.write(step + 1, batch, method)
                step += 1
                batch_in_epoch += 1
                window_steps += 1
                log_now = step % t.log_every == 0 or batch_in_epoch == steps_per_epoch or step >= max_steps
                trained = window_steps - window_skipped
                if log_now and trained:
                    guard.check(epoch)  # raises on a non-finite loss since the last check
                    # the one host sync; the loss averaged over ranks
                    loss_value = (distributed.mean_across_ranks(window_loss) / trained).item()
                    elapsed = time.perf_counter() - window_start
                    ips = window_steps * batch.size * dist.world / elapsed
                    wait = 100 * wait_time / elapsed
                    shown = dict(loss=f"{loss_value:.4f}", lr=f"{sched.lr[step - 1]:.2e}", ips=f"{ips:.0f}",
                                 wait=f"{wait:.0f}")
                    log.write("train", step, epoch=epoch, loss=loss_value, lr=float(sched.lr[step - 1]),
                              images_per_s=ips, data_wait_pct=wait)
                if log_now:
                    window_start, window_steps, window_skipped, wait_time = time.perf_counter(), 0, 0, 0.0
                    window_loss.zero_()
                bar.update(task, advance=1, **shown)
                interrupted = signals.requested(sync_point=log_now)
                if t.ckpt_every and step % t.ckpt_every == 0 and batch_in_epoch < steps_per_epoch and not interrupted:
                    save(epoch, batch_in_epoch, loss_sum)
                if step >= max_steps or interrupted:
                    stopped = True
                    break
        trained_in_epoch = max(batch_in_epoch - guard.skipped_in_epoch, 1)
        epoch_record = dict(epoch=epoch, loss=(distributed.mean_across_ranks(loss_sum) / trained_in_epoch).item(),
                            steps=step)
        if probe is not None and seen:
            seen_everywhere = distributed.sum_across_ranks(torch.tensor(seen, device=device)).item()
            epoch_record["probe_train_top1"] = 100 * distributed.sum_across_ranks(probe_correct).item() / seen_everywhere
        finished_epoch = batch_in_epoch == steps_per_epoch
        saved = save(epoch + 1 if finished_epoch else epoch, 0 if finished_epoch else batch_in_epoch,
                     torch.zeros_like(loss_sum) if finished_epoch else loss_sum)
        if interrupted:
            log.write("epoch", step, **epoch_record)
            distributed.barrier()  # no rank exits (and so no launcher kills rank 0) before the checkpoint is written
            log.close()
            raise faults.Interrupted(interrupted, f"stopped by {signal.Signals(interrupted).name} at step {step}; "
                                     f"checkpoint {saved}; continue with --resume auto")
        last = stopped or epoch + 1 == t.epochs
        if run.dataset.test is not None and dist.main and (
                (cfg.eval.every and (epoch + 1) % cfg.eval.every == 0) or last):
            epoch_record.update(evaluate(run, method, probe, dtype))
        log.write("epoch", step, **epoch_record)
        console.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in epoch_record.items()))
        summary.update(epoch_record)
        epoch, skip = epoch + 1, 0
    if run.dataset.test is None:
        console.print("evaluation skipped: the dataset has no labelled test/val split")
    log.close()
    return summary


def write_config(cfg: Config, out: Path) -> None:
    """The resolved config beside the checkpoints, every auto value filled in."""
    tmp = out / ".config.json.tmp"
    tmp.write_text(json.dumps(config_mod.to_dict(cfg), indent=2) + "\n")
    tmp.replace(out / "config.json")


def evaluate(run: Run, method, probe, dtype) -> dict:
    """kNN top-1 (and the joint probe's top-1) on the test split."""
    cfg, device = run.cfg, run.device
    bank_split = run.dataset.train.subset(cfg.eval.bank_limit, cfg.train.seed)
    query_split = run.dataset.test.subset(cfg.eval.query_limit, cfg.train.seed)
    size = cfg.views.global_size
    bank, bank_labels = extract(method.backbone, bank_split, size, device, dtype, cfg.data.workers)
    queries, query_labels = extract(method.backbone, query_split, size, device, dtype, cfg.data.workers)
    result = dict(knn_top1=knn_top1(bank, bank_labels, queries, query_labels, cfg.eval.k,
                                    cfg.eval.temperature, len(run.dataset.classes)))
    if probe is not None:
        with torch.no_grad():
            result["probe_top1"] = 100 * (probe(queries).argmax(1) == query_labels).float().mean().item()
    return result

