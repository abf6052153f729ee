"""Every benchmark runs end to end for a few batches and writes its table, CSV and chart."""

import csv
import time

from benchmarks import suite


def test_benchmark_suite_smoke(cifar_env, tmp_path):
    out = suite.main(["--profile", "smoke", "--imagenet", str(tmp_path / "absent"), "--out", str(tmp_path / "bench")])
    summary = (out / "summary.md").read_text()
    for stem in ("loaders_cifar10_sslight_cifar", "augment", "train_model", "train_loaders"):
        rows = list(csv.DictReader(open(out / f"{stem}.csv")))
        assert rows, stem
        assert (out / f"{stem}.png").stat().st_size > 1000
        assert all(float(r["images/s"]) > 0 for r in rows), rows
    pipelines = {r["pipeline"] for r in csv.DictReader(open(out / "loaders_cifar10_sslight_cifar.csv"))}
    assert {"pil", "nvjpeg", "synthetic"} <= pipelines
    loaders = {r["loader"]: r for r in csv.DictReader(open(out / "train_loaders.csv"))}
    assert set(loaders) == {"synthetic", "pil"} and 0 < float(loaders["pil"]["efficiency"])
    assert "| pipeline | output | images/s |" in summary


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
