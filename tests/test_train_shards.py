"""A packed dataset trains end to end (issue 28, acceptance 3), through the real trainer: with
every loader and the kNN reading the packed test split; two gloo processes on disjoint samples
with equal step counts; SIGKILL then --resume auto equal to an uninterrupted run; shards over a
real HTTP server on the loopback, one that drops connections mid-shard too; a hostile folder
packed with its bad files listed, then trained."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loaders import dali, ffcv
from loaders.datasets import load_dataset
from loaders.pack import INDEX, pack, report
from sslight import checkpoint
from sslight.cli import main
from sslight.train.log import read
from tests.conftest import TINY
from tests.test_distributed import read_trace, torchrun
from tests.test_shards import http_server  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]
NO_DALI = pytest.mark.skipif(not dali.available(), reason="dali not installed")
NO_FFCV = pytest.mark.skipif(not ffcv.available(), reason="ffcv not installed")
SMALL = [*TINY, "views.n_local=2", "eval.bank_limit=40", "eval.query_limit=20"]


@pytest.fixture(autouse=True)
def one_thread():
    """Behaviour, not speed, is under test: one thread per process keeps a loaded 2-core machine
    from thrashing (OpenMP's second thread spins while the other core is taken)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(out: Path, data, *args: str) -> list[dict]:
    assert main(["train", "--data", str(data), "--out", str(out), *SMALL, *args]) == 0
    return read(out / "metrics.jsonl")


def losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def check_trained(records: list[dict], steps: int) -> None:
    """Steps 1..steps with finite losses, and the kNN at the end."""
    assert list(losses(records)) == list(range(1, steps + 1))
    assert all(math.isfinite(v) for v in losses(records).values())
    assert 0 <= [r for r in records if r["kind"] == "epoch"][-1]["knn_top1"] <= 100


# ---- 1: every loader, the kNN on the packed test split ----

@pytest.mark.parametrize("loader", [
    "pil",
    "nvjpeg",
    pytest.param("dali", marks=NO_DALI),
    # its numba compile and .beton: about 17 s
    pytest.param("ffcv", marks=[pytest.mark.slow, NO_FFCV]),
])
def test_a_pack_trains_with_every_loader(cifar_packed, tmp_path, loader, monkeypatch):
    monkeypatch.setenv("SSLIGHT_DATA", str(tmp_path / "cache"))  # FFCV's .beton, scans: private
    out = tmp_path / "run"
    records = train(out, cifar_packed, "--loader", loader, "--epochs", "1", "--batch", "16", "--steps", "2")
    check_trained(records, 2)  # the kNN's bank and queries: the packed train and test splits (no image files)
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["path"] == str(cifar_packed) and config["data"]["loader"] == loader
    assert checkpoint.latest(out).name == "ckpt-e0000-s00000002.pt"


# ---- 2: two processes (gloo) ----

@pytest.mark.parametrize("loader", [
    "pil",
    # a second torchrun launch: about 12 s
    pytest.param("dali", marks=[pytest.mark.slow, NO_DALI]),
])
def test_two_ranks_read_disjoint_samples_and_take_equal_steps(cifar_packed, tmp_path, loader):
    out, trace = tmp_path / "run", tmp_path / "trace"
    # the pack's first 42 samples (data.limit cuts its third shard): 21 per rank, 5 batches of 4
    done = torchrun(out, trace, "--data", str(cifar_packed), "--loader", loader, "--epochs", "1", "--batch", "4",
                    "data.limit=42", "eval.every=0")
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [read_trace(trace, 0), read_trace(trace, 1)]
    assert [r["step"] for r in ranks[0]] == [r["step"] for r in ranks[1]] == [1, 2, 3, 4, 5]
    for a, b in zip(*ranks):
        assert a["params"] == b["params"], f"parameters differ after step {a['step']}"
    seen = [[i for r in rank for i in r["indices"]] for rank in ranks]
    assert all(len(s) == len(set(s)) == 20 for s in seen)
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) <= set(range(42))
    records = [r for r in read(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]


# ---- 3: SIGKILL mid-epoch, then --resume auto ----

# 48 samples, 2 workers (a stream of 24 each), batches of 8: 6 steps per epoch, 2 epochs
RESUMABLE = ["--epochs", "2", "--batch", "8", "data.limit=48", "data.workers=2", "--seed", "3", "eval.every=0",
             "train.ckpt_every=1"]


def start(out: Path, data: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sslight", "train", "--data", str(data), "--out", str(out), *SMALL, *RESUMABLE,
           *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="500"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return " ".join(err.split())


@pytest.mark.slow  # three training processes with their DataLoader workers: about a minute
def test_sigkill_mid_epoch_then_resume_auto_equals_an_uninterrupted_run(cifar_packed, tmp_path):
    whole = tmp_path / "whole"
    finish(start(whole, cifar_packed))
    parts = tmp_path / "parts"
    proc = start(parts, cifar_packed)
    deadline = time.monotonic() + 400
    while not (parts / "ckpt-e0000-s00000003.pt").exists():  # mid-epoch 0 (6 steps)
        assert proc.poll() is None, f"training ended early: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint at step 3"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint.load(checkpoint.latest(parts), torch.device("cpu"))["step"]
    assert 3 <= killed_at < 6, killed_at
    err = finish(start(parts, cifar_packed, "--resume", "auto"))
    assert f"at epoch 0, step {killed_at}" in err.split("resumed from")[1]

    whole_log, parts_log = read(whole / "metrics.jsonl"), read(parts / "metrics.jsonl")
    expected = losses(whole_log)
    assert list(expected) == list(range(1, 13)) and set(losses(parts_log)) == set(expected)
    for r in parts_log:  # every record, those the killed run logged past its checkpoint too
        if r["kind"] == "train":
            assert abs(r["loss"] - expected[r["step"]]) < 1e-5, (r["step"], r["loss"], expected[r["step"]])
    whole_state, parts_state = (checkpoint.load(checkpoint.latest(p), torch.device("cpu")) for p in (whole, parts))
    assert whole_state["step"] == parts_state["step"] == 12
    whole_state, parts_state = whole_state["method"], parts_state["method"]
    for key, value in whole_state.items():
        torch.testing.assert_close(parts_state[key], value, rtol=1e-5, atol=1e-5, msg=key)


# ---- 4: over HTTP, a real server on the loopback ----

@pytest.mark.slow  # two runs with their kNN: about 10 s
def test_shards_over_http_train_through_dropped_connections_as_from_disk(cifar_packed, tmp_path, http_server):
    args = ["--loader", "pil", "--epochs", "1", "--batch", "16", "--steps", "2"]
    local = train(tmp_path / "local", cifar_packed, *args)
    server = http_server(cifar_packed, cut=3000)  # every tar's first request ends after 3000 bytes
    remote = train(tmp_path / "remote", server.url, *args)
    check_trained(remote, 2)
    assert server.cut_done, "no connection was dropped"
    assert losses(remote) == losses(local)  # the same samples in the same order: the same losses
    assert remote[-1]["knn_top1"] == local[-1]["knn_top1"]  # the kNN read the test split over HTTP alike


def test_shards_over_http_train_through_dropped_connections(cifar_packed, tmp_path, http_server):
    server = http_server(cifar_packed, cut=3000)  # every tar's first request ends after 3000 bytes
    out = tmp_path / "run"  # data.loader=auto: one that streams over HTTP (DALI reads local files only)
    records = train(out, server.url, "--epochs", "1", "--batch", "16", "--steps", "2")
    check_trained(records, 2)  # the kNN too: the test split read over HTTP
    assert server.cut_done, "no connection was dropped"
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["path"] == server.url and config["data"]["loader"] in ("pil", "nvjpeg")


def test_a_shard_that_stays_unreadable_over_http_does_not_stop_the_run(cifar_packed, tmp_path, http_server,
                                                                       monkeypatch, capfd):
    monkeypatch.setattr("loaders.shards.BACKOFF", 0.01)
    shards = load_dataset(str(cifar_packed)).train.shards
    first = sum(len(s) for s in shards[:3])
    assert sum(len(s) for s in shards[:2]) < 40 <= first  # eval.bank_limit=40 (SMALL)
    server = http_server(cifar_packed, broken={"000002.tar"})  # the train split's third shard (test has two)
    # training reads the pack's first three shards, all in the epoch's one stream; the kNN's bank, its
    # first 40 samples, ends in the third too
    records = train(tmp_path / "run", server.url, "--loader", "pil", "--epochs", "1", "--batch", "8",
                    f"data.limit={first}")
    check_trained(records, first // 8)  # every step, and the kNN
    err = capfd.readouterr().err
    assert "train/000002.tar: unreadable after" in err
    assert err.count("replaced by other samples") == 1


# ---- 5: a hostile folder ----

def hostile_folder(root: Path, cifar_small: Path) -> tuple[Path, set[str]]:
    """Two CIFAR-10 classes (10 train, 5 test images each) with bad and odd files among the train
    images; returns the folder and its bad files (relative to it)."""
    src = root / "hostile"
    for split, n in (("train", 10), ("test", 5)):
        for cls in ("airplane", "cat"):
            (src / split / cls).mkdir(parents=True)
            for f in sorted((cifar_small / split / cls).iterdir())[:n]:
                (src / split / cls / f.name).write_bytes(f.read_bytes())
    odd = src / "train" / "cat"
    full = next(iter(sorted(odd.iterdir()))).read_bytes()
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "text.jpg").write_text("not an image at all\n")
    (odd / "truncated.jpg").write_bytes(full[: len(full) // 2])
    Image.fromarray(np.full((4, 3000, 3), 90, np.uint8)).save(odd / "strip.jpg")
    # odd but good: bytes after the JPEG's end, a 16-bit greyscale PNG, an RGBA PNG
    (odd / "trailing.jpg").write_bytes(full + b"\x00" * 300)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65536, (32, 32), dtype=np.uint16)).save(odd / "grey16.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)).save(odd / "rgba.png")
    return src, {"train/cat/empty.jpg", "train/cat/text.jpg", "train/cat/truncated.jpg", "train/cat/strip.jpg"}


@pytest.fixture(scope="module")
def hostile_pack(cifar_small, tmp_path_factory):
    """The hostile folder, packed in shards of 16 KB: (its pack, what pack() returned, its bad files)."""
    root = tmp_path_factory.mktemp("hostile")
    src, bad = hostile_folder(root, cifar_small)
    packed = pack(str(src), str(root / "packed"), shard_bytes=16 << 10, workers=2)
    return root / "packed", packed, bad


def test_a_hostile_folder_packs_with_its_bad_files_listed(hostile_pack):
    where, packed, bad = hostile_pack
    excluded = json.loads((where / INDEX).read_text())["excluded"]
    assert set(excluded) == bad and all(excluded.values())  # each with its reason
    said = "\n".join(report(packed))
    assert f"excluded {len(bad)} unreadable files" in said
    assert all(f"{path}: {excluded[path]}" in said for path in bad)
    dataset = load_dataset(str(where))
    assert len(dataset.train) == 20 + 3 and len(dataset.test) == 10 and dataset.classes == ["airplane", "cat"]
    assert len(dataset.train.shards) > 1
    for i in range(len(dataset.train)):  # every stored image is 8-bit RGB (the 16-bit and RGBA PNGs converted)
        with Image.open(io.BytesIO(dataset.train.read(i))) as im:
            assert im.mode == "RGB", (i, im.format, im.mode)


@pytest.mark.parametrize("loader", ["pil", "nvjpeg", pytest.param("dali", marks=NO_DALI)])
def test_a_hostile_folder_packed_trains(hostile_pack, tmp_path, loader):
    records = train(tmp_path / "run", hostile_pack[0], "--loader", loader, "--epochs", "1", "--batch", "8")
    check_trained(records, 2)  # one whole epoch: 23 samples, 2 batches of 8


@pytest.mark.slow  # three short runs: about 35 s
def test_a_resume_with_another_worker_count_reads_the_rest_of_the_epoch_as_the_checkpoints_run(
        cifar_packed, tmp_path, capsys):
    """A pack's epoch is cut in one part per loader worker: resumed mid-epoch with 1 worker, a run
    that started with 2 keeps reading with 2, and trains on the samples an uninterrupted run does."""
    args = ("--loader", "pil", "--epochs", "1", "--batch", "16", "data.limit=96", "eval.every=0",
            "eval.at_start=false")
    whole = losses(train(tmp_path / "whole", cifar_packed, *args, "data.workers=2"))
    assert list(whole) == list(range(1, 7))
    parts = tmp_path / "parts"
    train(parts, cifar_packed, *args, "data.workers=2", "--steps", "3")
    capsys.readouterr()
    resumed = losses(train(parts, cifar_packed, *args, "data.workers=1", "--resume", "auto"))
    assert set(resumed) == set(whole)
    for step in (4, 5, 6):
        assert abs(resumed[step] - whole[step]) < 1e-5, (step, resumed[step], whole[step])
    assert "data.workers=2, as in the run that wrote the checkpoint" in capsys.readouterr().err
