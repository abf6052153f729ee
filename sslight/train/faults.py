"""What stops a run, and how it stops without losing work: non-finite losses, SIGTERM/Ctrl-C,
failed checkpoint writes."""

from __future__ import annotations

import os
import signal
import threading

import torch
from torch import nn

from sslight import distributed
from sslight.interrupt import SIGNALS, Interrupted  # noqa: F401  (the CLI catches faults.Interrupted)

NO_BAD_STEP = 2**62  # "no bad step yet" for the min-reduction over ranks


class TrainingStopped(RuntimeError):
    """A run stopped by a fault; the message is one line. The CLI exits with code 1."""


class NonFiniteGuard:
    """Stops the run at a non-finite loss, or skips the update of up to ``allowed`` such steps.

    Host syncs: by default a step only records, on the device, the first bad step and its loss
    terms; :meth:`check` reads that back at the log steps (which sync anyway) and before every
    checkpoint, so a non-finite update may run on for the rest of a log window but is never
    saved, and the message names the first bad step. Skipping (``allowed`` > 0) must decide
    before the update, so it checks every step: one small host sync per step, opt-in.

    A skipped step also rolls back the state its forward pass changed (BatchNorm running
    statistics, DINO centre, queues), restored from a snapshot taken before the forward.
    """

    def __init__(self, allowed: int, device: torch.device):
        self.allowed, self.device = allowed, device
        self.skipped = 0  # over the whole run (this process)
        self.skipped_in_epoch = 0
        self._reset()

    @property
    def per_step(self) -> bool:
        return self.allowed > 0

    def _reset(self) -> None:
        self.first_bad = torch.full((), NO_BAD_STEP, device=self.device, dtype=torch.long)
        self.bad_terms: torch.Tensor | None = None
        self.term_names: list[str] = []

    def snapshot(self, method: nn.Module) -> dict[str, torch.Tensor] | None:
        if not self.per_step:
            return None
        return {name: b.detach().clone() for name, b in method.named_buffers()}

    @torch.no_grad()
    def record(self, step: int, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Device-side: remember the first step whose loss is not finite, with its terms."""
        values = torch.stack([loss.detach().float(), *(v.detach().float() for v in terms.values())])
        if self.bad_terms is None:
            self.term_names = ["loss", *terms]
            self.bad_terms = torch.zeros_like(values)
        first = ~torch.isfinite(values[0]) & (self.first_bad == NO_BAD_STEP)
        self.first_bad = torch.where(first, step, self.first_bad)
        self.bad_terms = torch.where(first, values, self.bad_terms)

    def check(self, epoch: int) -> str | None:
        """Host sync, collective over ranks: when a step since the last check had a non-finite
        loss on any rank and may be skipped, the warning to print; raises when it may not."""
        first_bad = int(distributed.min_across_ranks(self.first_bad).item())
        if first_bad == NO_BAD_STEP:
            return None
        # terms averaged over ranks: a rank's NaN shows in the message whichever rank it was on
        terms = distributed.mean_across_ranks(self.bad_terms).tolist()
        described = ", ".join(f"{n}={v:.6g}" for n, v in zip(self.term_names, terms))
        self._reset()
        self.skipped += 1
        where = f"step {first_bad} (epoch {epoch})"
        if self.skipped > self.allowed:
            allowance = f"; train.skip_nonfinite={self.allowed} bad steps allowed" if self.allowed else ""
            raise TrainingStopped(f"non-finite loss at {where}: {described}; stopped before saving it, "
                                  f"the newest checkpoint holds the last good state{allowance}")
        self.skipped_in_epoch += 1
        return f"non-finite loss at {where}: {described}; update skipped ({self.skipped} of {self.allowed} allowed)"

    @staticmethod
    @torch.no_grad()
    def restore(method: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
        for name, saved in snapshot.items():
            method.get_buffer(name).copy_(saved)


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) ask the loop to stop after the current step; a second
    signal acts at once, through the handler that was there before."""

    def __init__(self, device: torch.device):
        self.device = device
        self.signum = 0
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def requested(self, sync_point: bool) -> int:
        """The signal to stop for, or 0. With several ranks the ranks agree at sync points
        (the log steps) on whether any of them was signalled, so all stop at the same step."""
        if distributed.world_size() == 1:
            return self.signum
        if not sync_point:
            return 0
        return int(distributed.max_across_ranks(torch.tensor(self.signum, device=self.device)).item())


def poisoned_from_env(augment):
    """Fault injection for the tests: with SSLIGHT_FAULT_NAN_STEPS=3,5, ``augment`` (a callable of
    (batch, step)) turns the global views of those steps (counted from 1) into NaN, so the forward
    pass, the loss and the state it updates go non-finite as they would on real bad numerics.
    Unset, ``augment`` itself: the hook costs nothing."""
    steps = os.environ.get("SSLIGHT_FAULT_NAN_STEPS")
    if not steps:
        return augment
    bad = {int(s) for s in steps.split(",")}

    def poisoned(batch, step: int) -> list[torch.Tensor]:
        views = augment(batch, step)
        if step + 1 not in bad:
            return views
        return [torch.full_like(views[0], float("nan")), *views[1:]]

    return poisoned
