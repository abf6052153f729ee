"""The supervised SGD loop that the linear probe and semi-supervised fine-tuning both run."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from sslight.interrupt import stop_point


def fit(optimizer: torch.optim.Optimizer, lr: np.ndarray, batches: Iterable, logits_of: Callable) -> None:
    """Cross-entropy SGD over ``batches`` of (inputs, labels), step i at learning rate ``lr[i]``."""
    for step, (inputs, labels) in enumerate(batches):
        stop_point()  # a stop signal during an evaluation ends it here
        for group in optimizer.param_groups:
            group["lr"] = float(lr[step])
        loss = F.cross_entropy(logits_of(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
