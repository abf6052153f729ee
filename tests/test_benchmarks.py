"""The benchmarks' own logic: the sizes they measure fit their data, they fail instead of looping,
and they time what they say. The whole GPU suite runs in the GPU check's dry run
(tests/test_gpu_check.py)."""

import re
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmarks import suite
from benchmarks.loader_speed import cycle_epochs
from benchmarks.precision import training_step
from loaders.datasets import discover
from loaders.sampler import batches_per_epoch

ROOT = Path(__file__).resolve().parents[1]
GPU_MACHINE_WORKERS = 15  # make train's loader workers on the GPU machine's 16 cores


def carried_sample_size() -> int:
    """The ImageNet-sized JPEGs `make gpu-data` carries to the GPU machine."""
    return int(re.search(r"^GPU_SAMPLE := (\d+)$", (ROOT / "Makefile").read_text(), re.M).group(1))


def test_gpu_profile_fits_the_sample_the_gpu_check_carries(tmp_path):
    """The carried sample as it is would end epochs inside the gpu profile's measurements (a loader
    stream reads 23,296 images with the GPU machine's 15 workers) and is refused in one line; the
    links the suite makes from it hold every stream and every training row's steps in one epoch."""
    sample = tmp_path / "imagenet-sample"
    sample.mkdir()
    for i in range(carried_sample_size()):
        Image.new("RGB", (8 + i % 5, 8)).save(sample / f"n{i:04d}.JPEG")
    prof = suite.PROFILES["gpu"]
    loader_needs, train_needs = suite.loader_images(prof, GPU_MACHINE_WORKERS), suite.train_images(prof)
    with pytest.raises(SystemExit, match=r"^sample: 200 images, fewer than the 23296 that the loader rows"):
        suite.check_fits("sample", len(discover(sample).train), loader_needs, "the loader rows")

    links = suite.enough_images(sample, max(loader_needs, train_needs), tmp_path / "data")
    files = discover(links).train.files
    suite.check_fits("links", len(files), loader_needs, "the loader rows")
    suite.check_fits("links", len(files), train_needs, "the training rows")
    assert batches_per_epoch(len(files), prof.train_batch) >= prof.train_log_every * (prof.train_windows + 1)
    assert {str(Path(f).resolve()) for f in files} == {str(f) for f in sample.iterdir()}
    assert suite.enough_images(sample, 50, tmp_path / "data") == sample  # enough already: the sample itself


def test_an_epoch_without_batches_raises_instead_of_looping():
    """A loader that yields nothing (5 images, batches of 8, the last one dropped) ends the
    benchmark with one line; it used to ask for the next epoch for ever."""
    loader = torch.utils.data.DataLoader(list(range(5)), batch_size=8, drop_last=True)
    stream = cycle_epochs(lambda epoch: loader, "--batch 8 with 5 images")
    with pytest.raises(ValueError, match=r"^--batch 8 with 5 images: epoch 0 yielded no batch"):
        next(stream)
    two = torch.utils.data.DataLoader(list(range(5)), batch_size=2, drop_last=True)
    stream = cycle_epochs(lambda epoch: two, "--batch 2 with 5 images")
    assert [len(next(stream)) for _ in range(5)] == [2] * 5  # 2 batches an epoch, on into the next epochs


def test_a_timed_precision_step_starts_from_no_gradients():
    """Each timed step computes its gradients afresh: steps after the first do not add into them."""
    model = torch.nn.Conv2d(3, 4, 3)
    views = [torch.rand(2, 3, 8, 8), torch.rand(6, 3, 5, 5)]
    training_step(model, views, bf16=False)
    once = model.weight.grad.clone()
    training_step(model, views, bf16=False)
    torch.testing.assert_close(model.weight.grad, once)


def test_loader_cpu_accounts_for_the_workers(cifar_small):
    """Per-process CPU time of a worker-based loader: its two workers are found, and no other
    child process (CPU time comes in 10 ms ticks, too coarse to ask more of a few CIFAR batches)."""
    import multiprocessing

    from benchmarks import loader_cpu

    bystander = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
    bystander.start()
    try:
        result = loader_cpu.main(["--data", str(cifar_small), "--recipe", "sslight_cifar", "--batch", "8",
                                  "--batches", "4", "--views-ready"])
    finally:
        bystander.kill()
    assert result["images/s"] > 0 and result["main ms/image"] > 0
    assert len(result["workers ms/image"]) == 2 and all(ms >= 0 for ms in result["workers ms/image"])
