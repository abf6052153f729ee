"""The pre-trained student backbone of a checkpoint, with the config it was trained with."""

from __future__ import annotations

from pathlib import Path

import torch

from sslight import checkpoint
from sslight.config import AUTO, Config, ConfigError, apply_overrides, from_dict, validate
from sslight.models import build_backbone
from sslight.recipes import resolve_runtime

PREFIX = "student.backbone."  # every method keeps the evaluated backbone at method.student.backbone
RUNTIME_KEYS = ("train.device", "train.precision", "train.compile")  # chosen by the machine that evaluates


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the newest complete checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir():
        found = checkpoint.latest(path)
        if found is None:
            raise ConfigError(f"CKPT={str(path)!r}: no ckpt-*.pt checkpoint in this folder")
        return found
    if not path.is_file():
        raise ConfigError(f"CKPT={str(path)!r}: no such checkpoint file or run folder")
    return path


def config_of(state: dict, overrides: list[str]) -> Config:
    """The run's resolved config, with device and precision re-chosen here and ``overrides`` applied."""
    cfg = from_dict(state["config"])
    for key in RUNTIME_KEYS:
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, AUTO)
    apply_overrides(cfg, overrides)
    validate(cfg)
    resolve_runtime(cfg, torch.cuda.is_available())
    return cfg


def backbone_state(state: dict) -> dict[str, torch.Tensor]:
    return {k[len(PREFIX):]: v for k, v in state["method"].items() if k.startswith(PREFIX)}


def load(path: str | Path, overrides: list[str] = ()) -> tuple[Path, Config, torch.nn.Module]:
    """(checkpoint file, config, backbone with the student's weights on the config's device)."""
    path = resolve(path)
    state = checkpoint.load(path, torch.device("cpu"))
    cfg = config_of(state, list(overrides))
    backbone = build_backbone(cfg.model.name, cfg.model.small_stem, cfg.views.global_size)
    backbone.load_state_dict(backbone_state(state))  # strict: the architecture must match exactly
    device = torch.device(cfg.train.device)
    return path, cfg, backbone.to(device, memory_format=torch.channels_last)
