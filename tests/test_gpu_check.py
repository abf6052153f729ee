"""scripts/gpu_check.sh, run on the CPU as its dry run (GPU_CHECK_DRY=1: the same stages and commands,
tiny sizes), so that the script the GPU machine runs once cannot rot while no GPU runs it. The
whole dry run takes minutes: it is marked slow and CI runs it (``make gpu-check-dry``)."""

import csv
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_an_unknown_stage_is_refused_in_one_line(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "1", "4"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECK_WORK": str(tmp_path / "work")})
    assert result.returncode == 2
    assert result.stderr == "gpu_check: stage '4' unknown; allowed: 1, 2, 3\n"


def test_a_spent_budget_skips_the_commands_and_still_writes_the_stage(tmp_path):
    """GPU_CHECK_BUDGET bounds the whole call: past it no command starts, and the stage's log says so."""
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPT), "1"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "GPU_CHECK_DRY": "1", "GPU_CHECK_BUDGET": "0", "OUT": str(out),
                                 "GPU_CHECK_WORK": str(tmp_path / "work"), "PYTHON": sys.executable})
    assert result.returncode == 1
    log = (out / "stage1.log").read_text()
    assert log.count("gpu_check: SKIPPED, the budget is spent") == 3 and "gpu_check: stage 1 FAILED" in log


def rows(archive: tarfile.TarFile, name: str) -> list[dict]:
    return list(csv.DictReader(io.TextIOWrapper(archive.extractfile(name))))


@pytest.mark.slow
def test_dry_run_writes_every_stage(cifar_env, tmp_path):
    if not (SHARED / "imagenet-sample.tar").exists():
        pytest.skip(f"{SHARED / 'imagenet-sample.tar'} not found")
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "PYTHON": sys.executable, "OUT": str(out),
           "GPU_CHECK_WORK": str(tmp_path / "work"), "GPU_CHECK_DATA": str(tmp_path / "no-gpu-data"),
           "SSLIGHT_DATA": str(cifar_env)}  # CIFAR-10 prepared once for the whole session
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["stage1.log", "stage2.log", "stage2.md", "stage2.tar.gz",
                                                     "stage3.log", "stage3.md", "stage3.tar.gz"]
    for stage in (1, 2, 3):
        assert f"gpu_check: stage {stage} passed" in (out / f"stage{stage}.log").read_text()

    stage1 = (out / "stage1.log").read_text()
    assert " skipped" in stage1 and "deselected" in stage1  # pytest -m gpu: selected, then skipped without CUDA
    assert "tests/test_augment.py::" in stage1  # the contract tests, collected

    summary = (out / "stage2.md").read_text()
    for title in ("loaders, sslight_cifar", "photometric augmentation", "training, synthetic loader",
                  "training end to end"):
        assert title in summary
    with tarfile.open(out / "stage2.tar.gz") as archive:
        names = archive.getnames()
        for stem in ("loaders/loaders_imagenet-sample_sslight_cifar", "loaders/loaders_cifar10_sslight_cifar",
                     "loaders/augment", "train/train_model", "train/train_loaders"):
            assert f"./{stem}.png" in names
            assert all(float(r["images/s"]) > 0 for r in rows(archive, f"./{stem}.csv")), stem
        loaders = [r["loader"] for r in rows(archive, "./train/train_loaders.csv")]
        assert loaders[0] == "synthetic" and loaders[1].startswith("auto (") and loaders[2].startswith("auto:serial (")
        assert loaders[3] == "pil"
        assert not [n for n in names if n.endswith(".pt")]  # no checkpoints come back

    learning = (out / "stage3.md").read_text()
    assert "| dino | r18 | 0 |" in learning
    with tarfile.open(out / "stage3.tar.gz") as archive:
        assert "./r18_dino_s0/metrics.jsonl" in archive.getnames()
