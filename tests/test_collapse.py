"""The collapse indicator: its statistics on known feature sets, and on tiny runs that learn or
collapse (DINO with a uniform teacher, temperature 1.0, and a high constant learning rate)."""

import math

import pytest
import torch

from sslight.cli import main
from sslight.methods import METHODS
from sslight.train.log import CollapseMonitor, read
from tests.conftest import TINY


DINO_WARNING = METHODS["dino"].collapse_rank_warning


def stats_of(features: torch.Tensor) -> dict[str, float]:
    monitor = CollapseMonitor(DINO_WARNING)
    monitor.keep(features)
    return monitor.read()


def test_spread_features_read_as_healthy():
    stats = stats_of(torch.randn(256, 64, generator=torch.Generator().manual_seed(0)))
    assert stats["feature_std"] == pytest.approx(1.0, abs=0.05)  # std 1/sqrt(d) per dimension
    assert stats["rank_fraction"] > 0.8
    assert CollapseMonitor(DINO_WARNING).warning(stats) is None


def directions(n: int) -> torch.Tensor:
    """256 features in 64 dimensions that span ``n`` directions."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(256, n, generator=g) @ torch.randn(n, 64, generator=g) + 1e-3 * torch.randn(256, 64, generator=g)


def warnings(monitor: CollapseMonitor, readings: list[dict[str, float]]) -> list[str | None]:
    return [monitor.warning(stats) for stats in readings]


def test_features_on_a_few_directions_read_as_collapsed_and_warn_once_the_window_is_full():
    stats = stats_of(directions(2))
    assert stats["rankme"] < 2.5 and stats["rank_fraction"] < DINO_WARNING
    said = warnings(CollapseMonitor(DINO_WARNING), [stats] * 2 * CollapseMonitor.WINDOW)
    assert [i for i, w in enumerate(said) if w] == [CollapseMonitor.WINDOW - 1]
    assert "effective rank" in said[CollapseMonitor.WINDOW - 1]


def test_one_collapsed_batch_in_a_healthy_run_does_not_warn():
    healthy, collapsed = stats_of(torch.randn(256, 64, generator=torch.Generator().manual_seed(0))), \
        stats_of(directions(2))
    window = CollapseMonitor.WINDOW
    assert not any(warnings(CollapseMonitor(DINO_WARNING), [healthy] * (window - 1) + [collapsed] + [healthy] * window))


def test_the_warning_threshold_is_the_methods_own():
    """SwAV's healthy runs span fewer directions, so a rank that is collapse for DINO is not for it."""
    stats = stats_of(directions(9))
    assert METHODS["swav"].collapse_rank_warning <= stats["rank_fraction"] < DINO_WARNING
    readings = [stats] * CollapseMonitor.WINDOW
    assert not any(warnings(CollapseMonitor(METHODS["swav"].collapse_rank_warning), readings))
    assert any(warnings(CollapseMonitor(METHODS["dino"].collapse_rank_warning), readings))


def test_one_point_reads_as_complete_collapse():
    stats = stats_of(torch.ones(64, 32) + 1e-6 * torch.randn(64, 32))
    assert stats["feature_std"] < 0.01 and stats["rankme"] < 1.5


TINY_RUN = ["--model", "r18", "--batch", "64", "--epochs", "3", "--schedule", "short", "data.limit=0",
            "eval.at_start=false", "model.small_stem=false", "views.n_local=2", "optim.warmup_epochs=0",
            "dino.freeze_last_layer=0", "train.log_every=2", *TINY]


@pytest.fixture(scope="module")
def flat_cifar(data_dir, tmp_path_factory):
    """640 CIFAR-10 training images, unlabelled: a run on them skips evaluation."""
    flat = tmp_path_factory.mktemp("flat-cifar")
    classes = sorted((data_dir / "cifar10" / "train").iterdir())
    for c in classes:
        for f in sorted(c.iterdir())[:64]:
            (flat / f"{c.name}_{f.name}").symlink_to(f)
    return flat


def rank_trace(out, data, *args):
    assert main(["train", "--out", str(out), "--data", str(data), *TINY_RUN, *args]) == 0
    return [r["rank_fraction"] for r in read(out / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.slow  # two 30-step ResNet-18 runs at batch 64: about a minute on 2 cores
def test_the_indicator_separates_a_collapsing_run_from_a_learning_one(flat_cifar, tmp_path, capsys):
    learning = rank_trace(tmp_path / "learning", flat_cifar)
    assert "collapse:" not in capsys.readouterr().err
    collapsing = rank_trace(tmp_path / "collapsing", flat_cifar, "dino.teacher_temp=1.0",
                            "dino.warmup_teacher_temp=1.0", "optim.lr=10",
                            "optim.min_lr=2.5")  # lr 10 per 256 = 2.5 at batch 64, held
    assert "collapse: the features' effective rank" in capsys.readouterr().err
    assert all(map(math.isfinite, learning + collapsing))
    late = slice(len(learning) // 2, None)
    assert max(collapsing[late]) < min(learning[late])
