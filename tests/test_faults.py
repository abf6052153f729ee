"""Faults a long run meets: SIGKILL (also mid-checkpoint), a full disk, non-finite losses,
SIGTERM and Ctrl-C. Each runs the real trainer; none loses a complete checkpoint."""

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sslight import checkpoint
from sslight.cli import main
from sslight.train.log import read
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
# 64 images, 8 per batch: 8 steps per epoch
SMALL = [*TINY, "views.n_local=2", "data.limit=64", "--batch", "8", "--epochs", "1", "eval.every=0",
         "eval.bank_limit=40", "eval.query_limit=20"]


@pytest.fixture(autouse=True)
def one_thread():
    """Behaviour, not speed, is under test: one thread per process keeps a loaded 2-core
    machine from thrashing (these tests also run trainers in subprocesses)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def start(out: Path, data: Path, *args: str, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sslight", "train", "--data", str(data), "--out", str(out), *SMALL, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="500", **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240, poll: float = 0.002):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (found := predicate()):
            return found
        assert proc.poll() is None, f"training ended early: {proc.stderr.read()[-2000:]}"
        time.sleep(poll)
    raise AssertionError("timed out")


def partials(out: Path) -> list[Path]:
    return list(out.glob(".ckpt-*.tmp-*"))


def steps_of(out: Path) -> list[int]:
    return [r["step"] for r in read(out / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.slow  # three killed runs and their resumes: about 25 s
def test_sigkill_anywhere_then_resume_auto_finishes(cifar_small, tmp_path):
    out = tmp_path / "run"
    # 1: killed at a random moment after the first checkpoint
    proc = start(out, cifar_small, "train.ckpt_every=1")
    wait_for(lambda: checkpoint.latest(out), proc)
    time.sleep(random.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # 2: resumed, and killed while a checkpoint is being written (its temp file exists)
    for attempt in range(3):
        proc = start(out, cifar_small, "train.ckpt_every=1", "--resume", "auto")
        wait_for(lambda: [p for p in partials(out) if p.name.endswith(f"-{proc.pid}")], proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if [p for p in partials(out) if p.name.endswith(f"-{proc.pid}")]:
            break  # the kill landed mid-write: a partial file is left behind
    else:
        raise AssertionError("no kill landed inside a checkpoint write in 3 tries")
    last_complete = checkpoint.latest(out)
    resumed_step = checkpoint.load(last_complete, torch.device("cpu"))["step"]
    assert resumed_step >= 1
    # 3: resumed from the last complete checkpoint, never from the partial one, and finishes
    proc = start(out, cifar_small, "train.ckpt_every=1", "--resume", "auto")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert f"resumed from {last_complete} at epoch 0, step {resumed_step}" in " ".join(err.split())
    assert steps_of(out)[-(8 - resumed_step):] == list(range(resumed_step + 1, 9))
    assert checkpoint.latest(out).name == "ckpt-e0001-s00000008.pt"
    assert not partials(out), "partial checkpoints of killed writers are cleaned up"


def test_full_disk_keeps_the_previous_checkpoint(cifar_small, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "--data", str(cifar_small), "--out", str(out), *SMALL]
    assert main([*common, "--steps", "2"]) == 0
    before = checkpoint.latest(out)
    # the next checkpoint's temp file is /dev/full: every write to it fails with ENOSPC
    (out / f".ckpt-e0000-s00000004.pt.tmp-{os.getpid()}").symlink_to("/dev/full")
    capsys.readouterr()
    assert main([*common, "--steps", "4", "--resume", "auto"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("sslight: error: checkpoint at step 4 not written: "
                                               "No space left on device"), err
    assert f"the previous checkpoint {before} is intact" in err[0]
    assert checkpoint.complete(out) == [before]
    assert checkpoint.load(before, torch.device("cpu"))["step"] == 2
    assert not partials(out)


def finite(state) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_floating_point(v))


def test_nonfinite_loss_stops_naming_step_and_terms(cifar_small, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("SSLIGHT_FAULT_NAN_STEPS", "3")
    # checked every 2 steps (log and checkpoint steps): step 3 is found at step 4, before its save
    assert main(["train", "--data", str(cifar_small), "--out", str(out), *SMALL, "train.log_every=2",
                 "train.ckpt_every=2"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert ("non-finite loss at step 3 (epoch 0): loss=nan, global_global=nan, global_local=nan; "
            "stopped before saving it") in err
    assert [p.name for p in checkpoint.complete(out)] == ["ckpt-e0000-s00000002.pt"]
    assert finite(checkpoint.load(checkpoint.latest(out), torch.device("cpu"))["method"])


def test_skip_nonfinite_skips_the_update_then_stops_past_the_allowance(cifar_small, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("SSLIGHT_FAULT_NAN_STEPS", "2,3")
    assert main(["train", "--data", str(cifar_small), "--out", str(out), *SMALL, "train.ckpt_every=1",
                 "train.skip_nonfinite=1"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: non-finite loss at step 2 (epoch 0)" in err and "update skipped (1 of 1 allowed)" in err
    assert "non-finite loss at step 3 (epoch 0)" in err and "train.skip_nonfinite=1 bad steps allowed" in err
    s1, s2 = (checkpoint.load(p, torch.device("cpu")) for p in checkpoint.complete(out))
    assert (s1["step"], s2["step"]) == (1, 2)
    # the skipped step changed nothing: weights, teacher, centre, BatchNorm statistics, optimiser
    assert finite(s2["method"])
    for key, value in s1["method"].items():
        assert torch.equal(s2["method"][key], value), key
    for a, b in zip(s1["optimizer"]["state"].values(), s2["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert 2 not in steps_of(out)  # no loss logged for the skipped step


def test_sigterm_and_ctrl_c_checkpoint_then_resume(cifar_small, tmp_path):
    out = tmp_path / "run"
    stopped_at = 0
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        proc = start(out, cifar_small, "--resume", "auto")
        wait_for(lambda: (out / "metrics.jsonl").exists() and max(steps_of(out)) >= stopped_at + 2, proc, poll=0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
        err = " ".join(err.split())
        assert proc.returncode == code, err[-2000:]
        stop = next(w for w in err.split("sslight: ")[1:] if w.startswith("stopped by"))
        step = int(stop.split(" at step ")[1].split(";")[0])
        assert stop.startswith(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint")
        assert step > stopped_at and checkpoint.latest(out).name == f"ckpt-e0000-s{step:08d}.pt"
        stopped_at = step
    proc = start(out, cifar_small, "--resume", "auto")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert f"step {stopped_at}" in " ".join(err.split()).split("resumed from")[1]
    assert checkpoint.latest(out).name == "ckpt-e0001-s00000008.pt"
    assert math.isfinite(read(out / "metrics.jsonl")[-1]["loss"])
