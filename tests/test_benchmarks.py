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


def test_startup_dataset_is_made_once_of_distinct_readable_jpegs(tmp_path):
    """The start-up benchmark's synthetic dataset: an ImageFolder tree of distinct JPEGs of
    48-64 px, round-robin over the classes, that the screening keeps whole; asked again, it is
    the same folder, not made anew."""
    from benchmarks import startup
    from loaders.datasets import load_dataset

    folder = startup.make_folder(tmp_path / "folder", 30, 3, seed=0, pool=8)
    dataset = load_dataset(str(folder))
    assert dataset.classes == ["c000", "c001", "c002"] and not dataset.excluded
    assert sorted(dataset.train.labels) == sorted([i % 3 for i in range(30)])
    contents = [Path(f).read_bytes() for f in dataset.train.files]
    assert len(set(contents)) == 30  # distinct files, though they repeat 8 encoded images
    for f in dataset.train.files[:8]:
        with Image.open(f) as im:
            assert im.format == "JPEG" and 48 <= min(im.size) and max(im.size) <= 64
    mtime = folder.stat().st_mtime_ns
    assert startup.make_folder(tmp_path / "folder", 30, 3, seed=0, pool=8) == folder
    assert folder.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_startup_dry_run_times_a_folder_and_its_shards(tmp_path):
    """The whole start-up benchmark at a tiny size: packs the folder once, starts a fresh process
    twice per side, and reports phases that follow each other."""
    from benchmarks import startup

    table = startup.main(["--cache", str(tmp_path), "--images", "24", "--classes", "3", "--batch", "8",
                          "--loaders", "pil"])
    assert [r[:4] for r in table.rows] == [(1, "pil", "first", "folder"), (1, "pil", "first", "shards"),
                                           (1, "pil", "second", "folder"), (1, "pil", "second", "shards")]
    for row in table.rows:
        phases = row[5:9]
        assert 0 < phases[0] <= phases[1] <= phases[2] <= phases[3] < 120
        assert row[9] == pytest.approx(phases[3] - phases[0])
    assert table.rows[0][-2:] == (1.0, 1.0) and table.rows[1][-2] > 0 and table.rows[1][-1] > 0
    assert (tmp_path / "24x3-seed0" / "shards" / "index.json").is_file()


def test_shards_speed_repeats_a_sample_with_hard_links(tmp_path):
    from benchmarks.shards_speed import repeated

    sample = tmp_path / "sample"
    (sample / "a").mkdir(parents=True)
    for name in ("a/x.jpg", "y.jpg"):
        (sample / name).write_bytes(b"image " + name.encode())
    assert repeated(sample, 1, tmp_path / "work") == sample
    links = repeated(sample, 3, tmp_path / "work")
    assert sorted(str(p.relative_to(links)) for p in links.rglob("*.jpg")) == \
        ["a/r0-x.jpg", "a/r1-x.jpg", "a/r2-x.jpg", "r0-y.jpg", "r1-y.jpg", "r2-y.jpg"]
    assert (links / "a" / "r2-x.jpg").stat().st_ino == (sample / "a" / "x.jpg").stat().st_ino
    assert repeated(sample, 3, tmp_path / "work") == links  # made once


@pytest.mark.slow  # packs through a subprocess and runs every loader: about 15 s
def test_shards_speed_dry_run_measures_both_sides(cifar_small, tmp_path):
    """Every loader asked for, from the folder and from its shards (packed here with sslight
    pack), in one table with the shards / folder ratio; a loader absent here is skipped."""
    from benchmarks import shards_speed

    table = shards_speed.main(["--data", str(cifar_small), "--work", str(tmp_path), "--backends", "pil", "nvjpeg",
                               "--recipe", "sslight_cifar", "--batch", "4", "--batches", "1", "--rounds", "1",
                               "--workers", "0"])
    assert [(r[0], r[1]) for r in table.rows] == [("pil", "folder"), ("pil", "shards"),
                                                  ("nvjpeg", "folder"), ("nvjpeg", "shards")]
    for loader, side, ips, views, ratio, spread, note in table.rows:
        assert ips > 0 and views == ips * 8 and note == "", (loader, side, note)
        assert (ratio, spread) == (1.0, "") if side == "folder" else ratio > 0 and spread == f"{ratio:.2f}-{ratio:.2f}"
    assert len(list(tmp_path.glob("*-shards/index.json"))) == 1  # packed into --work


def test_shards_speed_interval_holds_the_ratio_and_narrows_with_agreeing_turns():
    from benchmarks.shards_speed import paired_interval

    folder, shards = [1.0, 1.2, 0.9, 1.1], [1.1, 1.1, 1.0, 1.0]
    low, high = paired_interval(folder, shards)
    assert low < sum(folder) / sum(shards) < high
    assert paired_interval([1.0, 2.0, 3.0], [1.1, 2.2, 3.3]) == pytest.approx((1 / 1.1, 1 / 1.1))
