"""End-to-end training on CIFAR-10 (shortened with STEPS): every method, three backbones, resume."""

import math

import pytest
import torch

from sslight import checkpoint
from sslight.cli import main
from sslight.train.log import read
from tests.conftest import TINY


def train(out, *args):
    assert main(["train", "--out", str(out), *args, *TINY]) == 0
    return read(out / "metrics.jsonl")


def check_run(out, records):
    train_records = [r for r in records if r["kind"] == "train"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert train_records and all(math.isfinite(r["loss"]) for r in train_records)
    assert all(0 <= r["data_wait_pct"] <= 100 and r["images_per_s"] > 0 for r in train_records)
    assert 0 <= epochs[-1]["knn_top1"] <= 100
    assert checkpoint.latest(out) is not None
    assert (out / "config.json").exists()


@pytest.mark.parametrize("args", [
    ["--method", "dino"],
    ["--method", "swav", "swav.queue_length=32", "swav.epoch_queue_starts=0"],
    ["--method", "moco"],
    ["--model", "r18", "--recipe", "baseline"],
    ["--model", "vit_t16"],
])
def test_methods_and_models_train(cifar_small, tmp_path, args):
    out = tmp_path / "run"
    records = train(out, "--data", str(cifar_small), "--epochs", "1", "--batch", "16", "--steps", "2",
                    "eval.bank_limit=40", "eval.query_limit=20", *args)
    check_run(out, records)


@pytest.mark.slow  # prepares the whole archive (60000 files: about 30 s of file creation here) and scans it
def test_default_dataset_is_cifar10(cifar_env, tmp_path):
    out = tmp_path / "run"
    records = train(out, "--steps", "1", "--batch", "16", "data.limit=64", "probe.enabled=true")
    check_run(out, records)
    config = (out / "config.json").read_text()
    assert '"global_size": 32' in config and '"local_size": 18' in config
    assert "probe_top1" in records[-1]


def test_flat_folder_trains_and_skips_evaluation(cifar_small, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, f in enumerate(sorted((cifar_small / "train").rglob("*.jpg"))[:40]):
        (flat / f"{i}.jpg").symlink_to(f.resolve())
    records = train(tmp_path / "run", "--data", str(flat), "--steps", "1", "--batch", "16")
    assert "knn_top1" not in records[-1]
    assert "evaluation skipped" in capsys.readouterr().err


def final_state(out):
    state = checkpoint.load(checkpoint.latest(out), torch.device("cpu"))
    return state["method"], [r for r in read(out / "metrics.jsonl") if r["kind"] == "train"]


def assert_resume_equals_uninterrupted(tmp_path, common: list[str], tolerance: float) -> None:
    """Two epochs of 6 steps in one run, and in three (stopped mid-epoch 0, then into epoch 1, then
    to the end, each resumed from the last): the same losses and the same final weights."""
    whole = tmp_path / "whole"
    train(whole, *common)
    parts = tmp_path / "parts"
    train(parts, *common, "--steps", "4")  # stops mid-epoch 0 (6 steps per epoch)
    train(parts, *common, "--resume", "auto", "--steps", "8")  # into epoch 1
    train(parts, *common, "--resume", "auto")
    whole_state, whole_log = final_state(whole)
    parts_state, parts_log = final_state(parts)
    assert [r["step"] for r in parts_log] == [r["step"] for r in whole_log]
    for a, b in zip(whole_log, parts_log):
        assert abs(a["loss"] - b["loss"]) < tolerance, (a, b)
    for key, value in whole_state.items():
        torch.testing.assert_close(parts_state[key], value, rtol=tolerance, atol=tolerance, msg=key)


@pytest.mark.parametrize("method", ["dino", "moco"])
def test_resume_equals_uninterrupted(cifar_small, tmp_path, method):
    # 48 images in batches of 8: the two epochs of 6 steps the check needs, at a quarter of the compute
    assert_resume_equals_uninterrupted(tmp_path, ["--data", str(cifar_small), "--method", method, "--epochs", "2",
                                                  "--batch", "8", "data.limit=48", "--seed", "3", "eval.every=0"],
                                       1e-5)


class OnAnotherDevice(torch.Tensor):
    """A tensor that says it lives on another device (a CUDA one here, where there is none), as
    checkpoint.load(map_location=cuda) leaves a checkpoint's tensors; only ``.cpu()`` reads it."""

    @staticmethod
    def __new__(cls, data: torch.Tensor, device: str):
        return torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=data.dtype, device=device)

    def __init__(self, data: torch.Tensor, device: str):
        self.bytes = data

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and torch.device(kwargs.get("device", "meta")).type == "cpu":
            return args[0].bytes.clone()
        raise NotImplementedError(f"{func}: the tensor is on another device")


def test_rng_states_restore_from_a_checkpoint_mapped_to_another_device():
    """A resumed CUDA run maps its checkpoint to the GPU, RNG states too, and torch.set_rng_state
    takes CPU byte tensors only. A checkpoint written on CUDA, with the CUDA generator's state,
    resumes on the CPU: the CPU state alone is restored."""
    from sslight.train.state import restore_rng, rng_state

    saved = rng_state(torch.device("cpu"))
    assert saved["cuda"] is None
    expected = torch.rand(4)
    cuda_state = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state: seed and offset
    restore_rng(dict(torch=OnAnotherDevice(saved["torch"], "cuda"), cuda=OnAnotherDevice(cuda_state, "cuda")),
                torch.device("cpu"))
    assert torch.equal(torch.rand(4), expected)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    for step in range(4):
        checkpoint.save({"step": step}, tmp_path, 0, step)
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["ckpt-e0000-s00000002.pt", "ckpt-e0000-s00000003.pt"]
    (tmp_path / ".ckpt-e0000-s00000009.pt.tmp-1").write_bytes(b"partial")
    assert checkpoint.latest(tmp_path).name == "ckpt-e0000-s00000003.pt"


def test_a_loader_bound_run_says_so_once(cifar_small, tmp_path, capsys, monkeypatch):
    import time

    from loaders import registry
    from loaders.synthetic import SyntheticLoader

    class Slow(SyntheticLoader):
        def epoch(self, epoch, skip_batches=0):
            for batch in super().epoch(epoch, skip_batches):
                time.sleep(0.5)
                yield batch

    # a small step (batch 8, 2 local crops) leaves the slow loader's wait the larger share, as the hint needs
    args = ["--data", str(cifar_small), "--loader", "synthetic", "--batch", "8", "views.n_local=2", "--steps", "4",
            "eval.every=0"]
    for loader, hints in ((Slow, 1), (SyntheticLoader, 0)):
        monkeypatch.setitem(registry.BACKENDS, "synthetic", loader)
        capsys.readouterr()
        train(tmp_path / loader.__name__, *args)
        assert " ".join(capsys.readouterr().err.split()).count("loader-bound: data-wait") == hints


def test_the_hint_skips_the_first_window_and_speaks_once():
    from sslight.train.log import LoaderBoundHint

    hint = LoaderBoundHint("pil", 1, 2)
    assert hint.check(90.0) is None  # the loader's start-up
    assert hint.check(5.0) is None
    said = hint.check(37.0)
    assert said.startswith("loader-bound: data-wait 37% over the last log window; try LOADER=nvjpeg")
    assert "data.workers=2" in said
    assert hint.check(80.0) is None
