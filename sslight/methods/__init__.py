"""Self-supervised methods; each takes augmented view groups and returns a loss."""

from sslight.methods.base import Method, StepContext
from sslight.methods.dino import Dino
from sslight.methods.moco import Moco
from sslight.methods.swav import Swav

METHODS = {"dino": Dino, "swav": Swav, "moco": Moco}

__all__ = ["Method", "StepContext", "METHODS", "Dino", "Swav", "Moco"]
