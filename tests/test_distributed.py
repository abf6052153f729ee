"""Data-parallel training on CPU: two torchrun processes (gloo) through the real CLI, and the
cross-rank collectives the methods use, checked against a single process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from sslight import checkpoint, distributed
from sslight.train.log import read
from sslight.methods.swav import sinkhorn
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
SMALL = [*TINY, "views.n_local=2", "eval.bank_limit=40", "eval.query_limit=20"]


def torchrun(out: Path, trace: Path, *args: str) -> subprocess.CompletedProcess:
    # one thread per process: two ranks on 2 cores, and OpenMP's spinning threads would thrash
    env = dict(os.environ, SSLIGHT_TRACE_DIR=str(trace), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sslight", "train", "--out", str(out), *SMALL, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def read_trace(trace: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (trace / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method,args", [
    ("dino", ["data.limit=42", "--batch", "4"]),  # one whole epoch: 21 images per rank, 5 batches
    # SwAV's queue and MoCo's across ranks: two more torchrun launches, about 20 s each on 2 cores
    pytest.param("swav", ["data.limit=32", "--batch", "4", "--steps", "3", "swav.queue_length=16",
                          "swav.epoch_queue_starts=0"], marks=pytest.mark.slow),
    pytest.param("moco", ["data.limit=32", "--batch", "4", "--steps", "3"], marks=pytest.mark.slow),
])
def test_two_ranks_stay_identical_and_split_the_epoch(cifar_small, tmp_path, method, args):
    out, trace = tmp_path / "run", tmp_path / "trace"
    done = torchrun(out, trace, "--data", str(cifar_small), "--method", method, "--epochs", "1",
                    "eval.every=0", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [read_trace(trace, 0), read_trace(trace, 1)]
    assert [r["step"] for r in ranks[0]] == [r["step"] for r in ranks[1]] == list(range(1, len(ranks[0]) + 1))
    for a, b in zip(*ranks):
        assert a["params"] == b["params"], f"parameters differ after step {a['step']}"
        assert a["state"] == b["state"], f"{method} state (centre/queue) differs after step {a['step']}"
    assert len({r["params"] for r in ranks[0]}) == len(ranks[0]), "parameters did not change every step"

    if method == "dino":  # the epoch's samples: disjoint per rank, all of them but the dropped remainder
        seen = [[i for r in rank for i in r["indices"]] for rank in ranks]
        assert len(ranks[0]) == 5
        assert not set(seen[0]) & set(seen[1])
        assert len(set(seen[0]) | set(seen[1])) == 2 * 5 * 4 and set(seen[0]) | set(seen[1]) <= set(range(42))

    # rank 0 alone writes: one record per step, one checkpoint series
    records = [r for r in read(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, len(ranks[0]) + 1))
    assert checkpoint.latest(out) is not None and (out / "config.json").exists()


def _collectives(rank: int, world: int, store: str, scores: torch.Tensor, queue: torch.Tensor,
                 expected: dict) -> None:
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        b = scores.shape[1] // world
        mine = scores[:, rank * b:(rank + 1) * b]
        torch.testing.assert_close(sinkhorn(mine, 0.05, 3), expected["plain"][:, rank * b:(rank + 1) * b])
        with_queue = sinkhorn(torch.cat([queue, mine], 1), 0.05, 3, shared=queue.shape[1])[:, -b:]
        torch.testing.assert_close(with_queue, expected["queue"][:, rank * b:(rank + 1) * b])
    finally:
        tdist.destroy_process_group()


def test_distributed_sinkhorn_equals_the_global_batch(tmp_path):
    """Each rank's share of the assignments equals the single-process assignments of the
    global batch, with and without a (shared) queue."""
    g = torch.Generator().manual_seed(0)
    scores, queue = torch.randn(2, 12, 10, generator=g), torch.randn(2, 6, 10, generator=g)
    q = queue.shape[1]
    expected = dict(plain=sinkhorn(scores, 0.05, 3), queue=sinkhorn(torch.cat([queue, scores], 1), 0.05, 3)[:, q:])
    # spawn, not fork: a child forked from a process whose OpenMP pool has run deadlocks in its first parallel op
    mp.start_processes(_collectives, args=(2, str(tmp_path / "store"), scores, queue, expected), nprocs=2,
                       start_method="spawn")


def _wrap_buffers(rank: int, world: int, store: str) -> None:
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        model.register_buffer("center", torch.zeros(1, 4))
        with torch.no_grad():  # per-rank state before the wrap
            model[1].running_mean.fill_(rank + 1)
            model[1].num_batches_tracked.fill_(rank + 5)
            model.center.fill_(10 * (rank + 1))
        distributed.wrap(model, distributed.Dist(rank, world))
        assert torch.all(model[1].running_mean == 1) and model[1].num_batches_tracked.item() == 5
        assert torch.all(model.center == 10)
    finally:
        tdist.destroy_process_group()


def test_wrap_starts_every_rank_from_rank_0s_buffers(tmp_path):
    """DDP's broadcast at construction leaves buffers out with broadcast_buffers=False (torch 2.11)
    and keeps them with forward_sync_buffers=False (torch 2.14): wrap broadcasts them itself."""
    mp.start_processes(_wrap_buffers, args=(2, str(tmp_path / "store")), nprocs=2, start_method="spawn")


def test_sync_bn_converts_every_batchnorm(cifar_small):
    """train.sync_bn swaps timm's fused BatchNorm+activation layers without dropping the activation."""
    from sslight.recipes import build_config
    from sslight.train.loop import build_method

    cfg = build_config([*SMALL, "views.global_size=32", "model.small_stem=true", "train.sync_bn=true",
                        "train.compile=false", "method=swav"])
    method = build_method(cfg, torch.device("cpu"), {})
    norms = [m for m in method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert any(type(m).__name__ == "SyncBatchNormAct" and not isinstance(m.act, torch.nn.Identity) for m in norms)
