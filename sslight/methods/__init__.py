"""Self-supervised methods; each takes augmented view groups and returns a loss."""

from sslight.methods.base import Method, StepContext
from sslight.methods.dino import Dino
from sslight.methods.moco import Moco
from sslight.methods.rob_dino import RobDino
from sslight.methods.swav import Swav

METHODS = {"dino": Dino, "swav": Swav, "moco": Moco, "rob_dino": RobDino}

__all__ = ["Method", "StepContext", "METHODS", "Dino", "Swav", "Moco", "RobDino"]
