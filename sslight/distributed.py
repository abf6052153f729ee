"""Data-parallel training through torchrun: process group, device, DDP wrap, collectives.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them (or with WORLD_SIZE=1) the run is
a single process and every helper here is the identity, so a single-process run takes exactly
the code path it took before distributed training existed.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch import nn

from sslight.config import ConfigError

# Rank 0 alone evaluates and writes checkpoints while the other ranks wait in their next
# collective; the timeout must outlast a kNN evaluation (NCCL's own default is 10 minutes).
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 logs, prints and writes the run's files."""
        return self.rank == 0


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def init(device: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes: gloo on CPU, NCCL on CUDA (one GPU per
    process, cuda:LOCAL_RANK). Returns the ranks and this process's training device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), torch.device(device)
    dist = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        if dist.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={dist.local_rank}: only {torch.cuda.device_count()} CUDA devices here; "
                              f"start at most that many processes per node")
        torch.cuda.set_device(dist.local_rank)
        train_device = torch.device("cuda", dist.local_rank)
    else:
        train_device = torch.device(device)
    if not active():
        tdist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=TIMEOUT,
                                 device_id=train_device if device == "cuda" else None)
    return dist, train_device


def shutdown() -> None:
    if active():
        tdist.destroy_process_group()


def barrier() -> None:
    if active():
        tdist.barrier()


@contextlib.contextmanager
def rank0_first(dist: Dist):
    """Rank 0 runs the block first (preparing data, writing caches), then the others, who
    then find the files ready instead of racing to write them."""
    if not dist.main:
        barrier()
    yield
    if dist.main:
        barrier()


def broadcast_object(obj, dist: Dist):
    """Rank 0's ``obj`` on every rank (small picklable values such as a checkpoint path)."""
    if not active():
        return obj
    box = [obj if dist.main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across_ranks(x: torch.Tensor) -> torch.Tensor:
    return _reduced(x, tdist.ReduceOp.SUM) / tdist.get_world_size() if active() else x


def _reduced(x: torch.Tensor, op) -> torch.Tensor:
    if not active():
        return x
    x = x.clone()
    tdist.all_reduce(x, op=op)
    return x


def sum_across_ranks(x: torch.Tensor) -> torch.Tensor:
    return _reduced(x, tdist.ReduceOp.SUM)


def max_across_ranks(x: torch.Tensor) -> torch.Tensor:
    return _reduced(x, tdist.ReduceOp.MAX)


def min_across_ranks(x: torch.Tensor) -> torch.Tensor:
    return _reduced(x, tdist.ReduceOp.MIN)


@torch.no_grad()
def gather_across_ranks(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order (no gradient)."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim)


def world_size() -> int:
    return tdist.get_world_size() if active() else 1


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """Batch statistics over the global batch. timm's converter also handles its fused
    BatchNormAct layers, which torch's own converter would strip of their activation."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(module)


def wrap(module: nn.Module, dist: Dist) -> nn.Module:
    """DistributedDataParallel around ``module`` when there are several ranks.

    Replicas start equal: DDP broadcasts rank 0's parameters, and rank 0's buffers are broadcast
    here (see below). Gradients of every parameter that requires one are averaged across ranks
    in the backward pass, so replicas stay equal, and so does anything derived from the
    parameters alone (the EMA teacher and key encoder). Buffers are not broadcast again in the
    forward passes: the methods keep their own state (DINO centre, queues) equal through
    collectives, and BatchNorm running statistics stay per rank (rank 0's are saved) unless
    train.sync_bn.
    """
    if dist.world == 1:
        return module
    # Once, here, so that every torch does it: DDP's broadcast at construction (_sync_module_states)
    # leaves the buffers out with broadcast_buffers=False (torch 2.11, the GPU machine's) and keeps
    # them with forward_sync_buffers=False, which replaces it (torch 2.14).
    with torch.no_grad():
        for buffer in module.buffers():
            tdist.broadcast(buffer, src=0)
    device_ids = [dist.local_rank] if next(module.parameters()).device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    no_forward_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
        else "broadcast_buffers"
    return ddp(module, device_ids=device_ids, **{no_forward_sync: False})
