"""Self-supervised methods by name; each takes augmented view groups and returns a loss."""

from __future__ import annotations

from sslight.config import Config, ConfigError
from sslight.methods.base import Method, StepContext
from sslight.methods.dino import Dino
from sslight.methods.moco import Moco
from sslight.methods.rob_dino import RobDino
from sslight.methods.swav import Swav

METHODS: dict[str, type[Method]] = {"dino": Dino, "swav": Swav, "moco": Moco, "rob_dino": RobDino}


def method_inputs(cfg: Config) -> dict:
    """What the run's method reads from files (RoB: its teacher), loaded once and checked before
    the run writes anything; teacher keys given to a method that reads no teacher are an error."""
    method = METHODS[cfg.method]
    if not method.reads_teacher:
        readers = ", ".join(name for name, m in METHODS.items() if m.reads_teacher)
        for key, value in (("teacher.path", cfg.teacher.path), ("teacher.head_path", cfg.teacher.head_path)):
            if value:
                raise ConfigError(f"{key}={value!r}: only {readers} uses a teacher; method is {cfg.method}")
    return method.inputs(cfg)


__all__ = ["Method", "StepContext", "METHODS", "method_inputs", "Dino", "Swav", "Moco", "RobDino"]
