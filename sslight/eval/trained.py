"""The trained student backbone of one of this project's checkpoints, with the config it was
trained with (device, precision and compilation re-chosen for the machine that evaluates)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sslight import checkpoint, recipes
from sslight.config import Config, ConfigError, all_keys, as_overrides
from sslight.models import build_backbone

PREFIX = "student.backbone."  # every method keeps the evaluated backbone at method.student.backbone
RUNTIME_KEYS = ("train.device", "train.precision", "train.compile")  # chosen by the machine that evaluates


def find(path: str | Path) -> Path:
    """A checkpoint file, or the newest readable checkpoint of a run folder (newer unreadable ones
    are skipped with a warning)."""
    path = Path(path)
    if path.is_dir():
        found, warnings = checkpoint.newest_readable(path, "CKPT")
        for warning in warnings:
            print(f"sslight: warning: {warning}", file=sys.stderr)
        if found is None:
            raise ConfigError(f"CKPT={str(path)!r}: no readable ckpt-*.pt checkpoint in this folder")
        return found
    if not path.is_file():
        raise ConfigError(f"CKPT={str(path)!r}: no such checkpoint file or run folder")
    return path


def config_of(saved: dict, overrides: list[str]) -> Config:
    """The run's config, resolved again on this machine: its saved values but the runtime keys
    (and any key this version no longer has), under ``overrides``."""
    keys = all_keys()
    kept = [item for item in as_overrides(saved)
            if (key := item.split("=", 1)[0]) in keys and key not in RUNTIME_KEYS]
    return recipes.resolve(recipes.parse([*kept, *overrides]), recipes.Machine.here())


@dataclass
class TrainedBackbone:
    path: Path  # the checkpoint file
    cfg: Config
    weights: dict[str, torch.Tensor]

    def build(self) -> nn.Module:
        """A fresh copy of the backbone with the student's weights, on the config's device."""
        cfg = self.cfg
        backbone = build_backbone(cfg.model.name, cfg.model.small_stem, cfg.views.global_size)
        backbone.load_state_dict(self.weights)  # strict: the architecture must match exactly
        return backbone.to(torch.device(cfg.train.device), memory_format=torch.channels_last)


def load(path: str | Path, overrides: list[str] = ()) -> TrainedBackbone:
    path = find(path)
    state = checkpoint.read(path, "CKPT")
    weights = {k[len(PREFIX):]: v for k, v in state["method"].items() if k.startswith(PREFIX)}
    return TrainedBackbone(path, config_of(state["config"], list(overrides)), weights)
