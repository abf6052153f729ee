"""What a checkpoint of a run holds, and how a run resumes from it, so that a resumed run equals
an uninterrupted one (tests/test_train.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sslight import checkpoint, config as config_mod, distributed
from sslight.config import Config
from sslight.methods import Method
from sslight.train.faults import NonFiniteGuard, TrainingStopped
from sslight.train.probe import JointProbe


@dataclass
class Position:
    """Where training stands: the epoch, the global step, the batches of this epoch already
    trained, and their summed loss (so the mean loss of a resumed epoch stays exact)."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    workers: int | None = None  # the loader workers of the run that wrote the checkpoint


def rng_state(device: torch.device) -> dict:
    """The RNG states a resumed run needs, as CPU tensors: the CPU's (torch's default generator)
    and, training on CUDA, the training device's (ViT drop path draws from it). One device per
    process: every rank seeds and draws alike, so rank 0's states are every rank's, as they are
    for the CPU."""
    return dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def restore_rng(saved: dict, device: torch.device) -> None:
    """Restores :func:`rng_state`'s states, wherever ``map_location`` put their tensors (the
    generators take CPU byte tensors only). A run written on CUDA resumed on the CPU restores the
    CPU state alone (nothing there draws from a CUDA generator); one written on the CPU resumed on
    CUDA keeps the CUDA generator as the seed set it."""
    torch.set_rng_state(saved["torch"].cpu())
    if saved.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda"].cpu(), device)


@dataclass
class TrainState:
    """Everything a checkpoint saves beside the position."""

    method: Method
    optimizer: torch.optim.Optimizer
    probe: JointProbe | None
    guard: NonFiniteGuard
    device: torch.device
    replacing: list[Path] = field(default_factory=list)  # another run's checkpoints, removed after our first

    def save(self, cfg: Config, out: Path, dist: distributed.Dist, epoch: int, step: int, batch_in_epoch: int,
             epoch_loss_sum: torch.Tensor) -> Path | None:
        """Rank 0 writes; every rank takes part in the checks before it (collectives)."""
        self.guard.check(epoch)  # raises before a non-finite update could be saved
        loss_sum = distributed.mean_across_ranks(epoch_loss_sum).item()
        if not dist.main:
            return None
        state = dict(method=self.method.state_dict(), optimizer=self.optimizer.state_dict(),
                     **(self.probe.state_dict() if self.probe is not None else dict(probe=None, probe_opt=None)),
                     epoch=epoch, step=step, batch_in_epoch=batch_in_epoch, epoch_loss_sum=loss_sum,
                     skipped_in_epoch=self.guard.skipped_in_epoch if batch_in_epoch else 0,
                     rng=rng_state(self.device), config=config_mod.to_dict(cfg))
        try:
            path = checkpoint.save(state, out, epoch, step, self.replacing)
            self.replacing = []
            return path
        except OSError as exc:
            previous = checkpoint.latest(out)
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint"
            raise TrainingStopped(f"checkpoint at step {step} not written: {exc.strerror or exc} "
                                  f"({out}); {kept}") from exc

    def restore(self, path: Path) -> Position:
        state = checkpoint.load(path, self.device)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.probe is not None and state.get("probe"):
            self.probe.load_state_dict(state)
        self.guard.skipped_in_epoch = state.get("skipped_in_epoch", 0)
        restore_rng(state["rng"], self.device)
        return Position(state["epoch"], state["step"], state["batch_in_epoch"], state["epoch_loss_sum"],
                        state["config"]["data"]["workers"])
