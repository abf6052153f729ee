"""Sweeps: grid syntax and its errors, and a tiny two-run sweep end to end (table, plot, skip, resume)."""

import csv
import json

import pytest

from sslight.cli import main
from sslight.config import ConfigError
from sslight.sweep.grid import parse_grid, plan, points, run_name
from sslight.recipes import build_config
from sslight.sweep.seeds import comparisons, spread
from tests.conftest import TINY


def test_grid_expands_every_combination():
    axes = parse_grid("views.local_size=96,128 loss.alpha=auto,0.4")
    grid = points(axes)
    assert grid == [{"views.local_size": "96", "loss.alpha": "auto"}, {"views.local_size": "96", "loss.alpha": "0.4"},
                    {"views.local_size": "128", "loss.alpha": "auto"}, {"views.local_size": "128", "loss.alpha": "0.4"}]
    assert run_name(grid[1]) == "views.local_size=96__loss.alpha=0.4"
    assert [p["recipe"] for p in points(parse_grid("recipe=baseline,sslight"))] == ["baseline", "sslight"]


@pytest.mark.parametrize("spec, values", [
    ("views.global_scale=(0.14,1.0),(0.3,1.0)", ("0.14,1.0", "0.3,1.0")),
    ("views.global_scale=(0.3,1.0)", ("0.3,1.0",)),
    ("views.global_scale=0.3,1.0", ("0.3,1.0",)),  # one pair, as train takes it
    ("views.global_scale=0.14:1.0,0.3:1.0", ("0.14,1.0", "0.3,1.0")),  # the earlier syntax
])
def test_pairs_are_min_comma_max_as_in_train_in_parentheses_when_several(spec, values):
    (axis,) = parse_grid(spec)
    assert axis.values == values
    cfg = build_config([f"{axis.key}={axis.values[0]}"])
    assert cfg.views.global_scale == tuple(float(v) for v in values[0].split(","))


@pytest.mark.parametrize("spec, message", [
    ("views.global_scale=0.3", "expected a pair 'min,max'"),
    ("views.global_scale=0.3,0.5,1.0", "expected a pair 'min,max'"),
    ("views.global_scale=a:1.0", "expected a pair"),
    ("views.global_scale=(0.14,1.0)(0.3,1.0)", "expected pairs in parentheses separated by commas"),
    ("views.global_scale=(0.14,1.0),0.3", "expected pairs in parentheses separated by commas"),
    ("loss.alpha=0.1:0.2", "expected a number or 'auto'"),
    ("lr=0.1,0.2", "did you mean 'optim.lr'"),
    ("recipe=baseline,foo", "is not one of baseline, sslight"),
    ("views.local_sise=96", "did you mean 'views.local_size'"),
    ("recipe", "expected key=value1,value2"),
    ("loss.alpha=auto,,0.4", "empty value"),
    ("recipe=baseline recipe=sslight", "appears twice"),
    ("recipe=baseline,baseline", "repeated"),
    ("train.out=a,b", "cannot be swept"),
    ("   ", "empty grid"),
])
def test_bad_grids_name_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(spec)


def test_bad_runs_stop_the_sweep_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--sweep", "views.global_scale=(0.9,0.3)", "--out", str(out)]) == 2
    assert "views.global_scale=(0.9, 0.3)" in capsys.readouterr().err
    assert main(["sweep", "--sweep", "loss.alpha=auto,0.4", "--out", str(out), "loss.alpha=0.5"]) == 2
    assert "both swept" in capsys.readouterr().err
    assert not out.exists()


def test_a_sweep_starts_every_run_from_its_config_file(tmp_path, capsys):
    from sslight.config import as_overrides, read_file

    path = tmp_path / "base.yaml"
    path.write_text("model:\n  name: r18\nviews:\n  n_local: 4\nschedule: full\n")
    runs = plan(parse_grid("loss.alpha=auto,0.4"), ["train.epochs=2"], tmp_path / "sweep",
                as_overrides(read_file(str(path))))
    for run in runs:
        cfg = build_config(run.overrides)
        assert (cfg.model.name, cfg.views.n_local, cfg.schedule, cfg.train.epochs) == ("r18", 4, "full", 2)
    assert [build_config(r.overrides).loss.alpha for r in runs] == ["auto", 0.4]

    path.write_text("views:\n  n_locals: 4\n")
    out = tmp_path / "bad"
    assert main(["sweep", "--sweep", "loss.alpha=auto,0.4", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "did you mean 'views.n_local'" in err and not out.exists()


def test_tiny_sweep_end_to_end_skips_finished_and_resumes(cifar_small, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--sweep", "loss.alpha=auto,0.4", "--data", str(cifar_small), "--out", str(out),
            "--batch", "16", "--steps", "1", "train.epochs=1", "--linear", "true", *TINY, "eval.bank_limit=64", "eval.query_limit=32",
            "linear.epochs=5"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert ("| run | loss.alpha | knn_top1 | knn_top1_init | knn_gain | linear_top1 | linear_top5 | rank_pct "
            "| images_per_s | wall_min | status |") in table
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["loss.alpha"] for r in rows] == ["auto", "0.4"]
    assert all(0 <= float(r["knn_top1"]) <= 100 and float(r["images_per_s"]) > 0 for r in rows)
    assert all(float(r["knn_gain"]) == pytest.approx(float(r["knn_top1"]) - float(r["knn_top1_init"]), abs=1e-4)
               for r in rows)
    assert all(0 <= float(r["linear_top1"]) <= float(r["linear_top5"]) <= 100 for r in rows)
    assert (out / "plot_loss.alpha.png").stat().st_size > 0
    finished = out / "loss.alpha=0.4" / "result.json"
    stamp = finished.stat().st_mtime_ns

    assert main(args) == 0  # everything finished: nothing runs again
    assert finished.stat().st_mtime_ns == stamp
    assert "2 finished already, 0 to run" in capsys.readouterr().err

    # an interrupted run (no result file) is refused without --resume auto and finished with it
    (out / "loss.alpha=auto" / "result.json").unlink()
    assert main(args) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert main([*args, "--resume", "auto"]) == 0
    result = json.loads((out / "loss.alpha=auto" / "result.json").read_text())
    assert result["resumed"] and finished.stat().st_mtime_ns == stamp

    with pytest.raises(ConfigError, match="other settings"):  # the folder belongs to this grid's settings
        plan(parse_grid("loss.alpha=auto,0.4"), ["train.batch_size=8"], out)


def seeded_table(scores: dict[str, list[float]]) -> list[dict]:
    return [{"recipe": recipe, "train.seed": str(seed), "knn_top1": knn, "knn_gain": knn - 20.0}
            for recipe, knns in scores.items() for seed, knn in enumerate(knns)]


def test_seed_repeats_give_mean_std_and_whether_a_difference_beats_the_noise():
    axes = parse_grid("recipe=baseline,sslight train.seed=0,1,2")
    apart = seeded_table({"baseline": [30.0, 30.5, 29.5], "sslight": [35.0, 35.4, 34.6]})
    (base, ssl) = spread(axes, apart).rows
    assert base[:3] == ("baseline", 3, 30.0) and base[3] == pytest.approx(0.5)
    assert ssl[4] == pytest.approx(15.0) and ssl[5] == pytest.approx(0.4)
    (row,) = comparisons(axes, apart).rows
    assert row[:3] == ("recipe", "sslight - baseline", "-") and row[3] == pytest.approx(5.0)
    assert row[4] < 0.01 and row[5] == "yes"
    noisy = seeded_table({"baseline": [28.0, 31.0, 34.0], "sslight": [29.0, 32.5, 35.0]})
    (row,) = comparisons(axes, noisy).rows
    assert row[3] == pytest.approx(7 / 6) and row[4] > 0.5 and row[5] == "no"
    assert comparisons(axes, seeded_table({"baseline": [30.0], "sslight": [31.0]})) is None  # one seed: no test


@pytest.mark.slow  # a sweep and its run started in processes: about 15 s
def test_ctrl_c_stops_a_sweep_and_its_runs_with_one_line_each(cifar_small, tmp_path):
    """Ctrl-C signals the whole process group: the sweep and the run it started. The sweep ends
    with one line and exit 130; the run's log.txt ends with its own one line, no traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "sslight", "sweep", "--sweep", "loss.alpha=auto,0.4", "--data", str(cifar_small),
           "--out", str(out), "--batch", "16", "train.epochs=50", *TINY]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    log = out / "loss.alpha=auto" / "log.txt"
    end = time.monotonic() + 180
    while not (log.exists() and "step " in log.read_text()):  # the run is training
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.splitlines()[-1] == ("sslight: stopped by SIGINT during the sweep; finished runs are kept; "
                                    "continue with --resume auto"), err
    assert "Traceback" not in err
    run_log = log.read_text()
    assert "Traceback" not in run_log and run_log.splitlines()[-1].startswith("sslight: stopped by SIGTERM"), run_log
    assert list(log.parent.glob("ckpt-*.pt")), "the run stopped without its checkpoint"
