"""The contract every loader backend keeps: the :class:`Loader` protocol and the :class:`Batch`
it yields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch


@dataclass(frozen=True)
class ViewGroup:
    """``n`` crops at ``size`` x ``size`` with random-resized-crop ``scale`` and ``ratio`` ranges."""

    n: int
    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]


def view_groups(views) -> list[ViewGroup]:
    """The resolution groups of a resolved ``ViewsConfig``: globals first, then locals."""
    groups = [ViewGroup(views.n_global, views.global_size, tuple(views.global_scale), tuple(views.ratio))]
    if views.n_local:
        groups.append(ViewGroup(views.n_local, views.local_size, tuple(views.local_scale), tuple(views.ratio)))
    return groups


def channels_last_views(pixels: torch.Tensor) -> torch.Tensor:
    """(..., S, S, 3) pixels as the contract's (..., 3, S, S) views, without a copy.

    Channels-last is what decoders and resamplers produce (libjpeg-turbo, torch's uint8
    antialiased resampler, DALI, FFCV, PIL) and what the photometric step and the model read,
    so no backend pays for a transpose: writing the crops channels-first cost torch's resampler
    about 30% more time."""
    return pixels.movedim(-1, -3)


def is_channels_last_views(views: torch.Tensor) -> bool:
    return views.movedim(-3, -1).is_contiguous()


@dataclass
class Batch:
    """One batch of views, geometry applied, photometry not.

    ``views[g]`` is a uint8 tensor (n_g, B, 3, S_g, S_g) for resolution group g, view-major so
    that ``views[g].flatten(0, 1)`` lists view 0 of every image, then view 1, and so on. Its
    memory is channels-last, (n_g, B, S_g, S_g, 3) (see :func:`channels_last_views`).
    ``labels`` is -1 for unlabelled data; ``indices`` are dataset sample indices.
    """

    views: list[torch.Tensor]
    labels: torch.Tensor
    indices: torch.Tensor

    def pin_memory(self) -> "Batch":
        """The batch in pinned host memory, layout kept: what the DataLoader's pin step calls on
        a custom type, so that ``to(cuda)`` copies asynchronously."""
        return Batch([v.pin_memory() for v in self.views], self.labels.pin_memory(), self.indices.pin_memory())

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        return Batch([v.to(device, non_blocking=nb) for v in self.views],
                     self.labels.to(device, non_blocking=nb), self.indices.to(device, non_blocking=nb))

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


class Loader(Protocol):
    """What the trainer asks of a backend. A backend is built as
    ``Backend(split, groups, batch_size, seed, device, workers, rank, world)`` (loaders.registry)."""

    works_in_caller: bool  # makes each batch in the thread that asks for it (then worth prefetching)

    def batches_per_epoch(self) -> int:
        """Full batches in a whole epoch on this rank, whatever a resume skips."""

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` after the first ``skip_batches`` (a run resumed mid-epoch),
        each on the training device."""
