"""Pictures of runs: curves.png from metrics.jsonl (one run, several overlaid, resumed, live),
``sslight plot``'s defaults and errors, and a sweep's report (rank column, seeds as error bars,
every run's curves)."""

import csv
import json
import math

import pytest

from sslight.config import ConfigError
from sslight.plot import PANELS, draw, main, save_curves
from sslight.sweep.grid import RESULT, Planned, parse_grid, points, run_name
from sslight.sweep.report import report, seed_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train(step: int, loss: float, rank: float = 0.6) -> dict:
    return dict(kind="train", step=step, time=0.0, epoch=(step - 1) // 4, loss=loss, lr=0.1 / step,
                images_per_s=100.0 + step, data_wait_pct=5.0, feature_std=0.8, rankme=10.0, rank_fraction=rank)


def write_run(folder, records, tail: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def learning_run(folder, start_loss: float = 6.0) -> None:
    write_run(folder, [
        dict(kind="init", step=0, time=0.0, knn_top1=20.0),
        *(train(s, start_loss - 0.1 * s) for s in range(1, 5)),
        dict(kind="epoch", step=4, time=0.0, epoch=0, loss=5.8, steps=4, knn_top1=25.0),
        *(train(s, start_loss - 0.1 * s) for s in range(5, 9)),
        dict(kind="epoch", step=8, time=0.0, epoch=1, loss=5.4, steps=8, knn_top1=28.0),
    ])


def lines(fig) -> dict[str, dict[str, tuple[list, list]]]:
    """Each panel's lines by label: (steps, values)."""
    return {ax.get_title(): {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                             for line in ax.get_lines()} for ax in fig.axes}


def test_two_runs_overlaid_in_every_panel_with_knn_from_initialisation(tmp_path):
    learning_run(tmp_path / "a")
    learning_run(tmp_path / "b", start_loss=7.0)
    fig = draw([tmp_path / "a", tmp_path / "b"])
    drawn = lines(fig)
    assert list(drawn) == [title for _, title, _ in PANELS]
    assert all(set(panel) == {"a", "b"} for panel in drawn.values())
    assert drawn["loss"]["b"] == (list(range(1, 9)), pytest.approx([7.0 - 0.1 * s for s in range(1, 9)]))
    assert drawn["kNN top-1 (%)"]["a"] == ([0, 4, 8], [20.0, 25.0, 28.0])
    assert drawn["learning rate"]["a"][1][-1] == pytest.approx(0.1 / 8)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]

    png = save_curves([tmp_path / "a", tmp_path / "b"], tmp_path / "out" / "curves.png")
    assert png == tmp_path / "out" / "curves.png" and png.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in png.parent.iterdir()] == ["curves.png"]  # no temporary file left


def test_resumed_run_keeps_the_later_records_and_a_live_run_its_complete_lines(tmp_path):
    # resumed from the checkpoint at step 2: steps 3-4 were logged twice, the later ones count
    records = [train(1, 6.0), train(2, 5.9), train(3, 9.9), train(4, 9.9), train(3, 5.8), train(4, 5.7)]
    write_run(tmp_path / "run", records, tail='{"kind": "train", "step": 5, "lo')  # a line being written
    loss = lines(draw([tmp_path / "run"]))["loss"]["run"]
    assert loss == ([1, 2, 3, 4], [6.0, 5.9, 5.8, 5.7])


def test_one_run_is_titled_and_a_metric_never_logged_says_so(tmp_path):
    write_run(tmp_path / "run", [train(1, 6.0)])  # no kNN: an unlabelled dataset
    fig = draw([tmp_path / "run"])
    assert fig._suptitle.get_text() == "run" and not fig.legends
    knn = fig.axes[-1]
    assert not knn.get_lines() and [t.get_text() for t in knn.texts] == ["not logged"]


def test_folders_of_the_same_name_are_told_apart_by_their_paths(tmp_path):
    learning_run(tmp_path / "x" / "run")
    learning_run(tmp_path / "y" / "run")
    fig = draw([tmp_path / "x" / "run", tmp_path / "y" / "run"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [str(tmp_path / "x" / "run"),
                                                                 str(tmp_path / "y" / "run")]


def test_nothing_is_written_before_the_first_log_window(tmp_path):
    write_run(tmp_path / "run", [dict(kind="init", step=0, time=0.0, knn_top1=10.0)])
    png = tmp_path / "run" / "curves.png"
    assert save_curves([tmp_path / "run"], png) is None and not png.exists()
    assert main([str(tmp_path / "run")], None) == 1


def test_plot_command_defaults_and_errors(tmp_path, monkeypatch, capsys):
    learning_run(tmp_path / "a")
    learning_run(tmp_path / "b")
    assert main([str(tmp_path / "a")], None) == 0
    assert (tmp_path / "a" / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert f"curves: {tmp_path / 'a' / 'curves.png'}" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert main(["a", "b"], None) == 0 and (tmp_path / "curves.png").exists()  # several runs: the cwd
    assert main(["a", "b"], str(tmp_path / "pics" / "ab.png")) == 0 and (tmp_path / "pics" / "ab.png").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^empty is not a run folder \(no metrics.jsonl in it\)"):
        main(["a", "empty"], None)


def sweep_runs(tmp_path, axes, knn) -> list[Planned]:
    """Finished runs of the grid, each with a result and a log; ``knn(point)`` its final kNN top-1."""
    runs = []
    for point in points(axes):
        run = Planned(run_name(point), point, [], tmp_path / "sweep" / run_name(point))
        learning_run(run.out)
        rank = 0.1 if point.get("recipe") == "baseline" else 0.5
        with open(run.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(train(9, 5.0, rank=rank)) + "\n")
        (run.out / RESULT).write_text(json.dumps(dict(knn_top1=knn(point), images_per_s=100.0, wall_min=1.0)))
        runs.append(run)
    return runs


def test_sweep_over_seeds_reports_rank_and_draws_means_with_error_bars(tmp_path, capsys):
    axes = parse_grid("recipe=baseline,sslight train.seed=0,1,2")
    scores = {"baseline": [30.0, 31.0, 32.0], "sslight": [35.0, 35.5, 34.5]}
    runs = sweep_runs(tmp_path, axes, lambda p: scores[p["recipe"]][int(p["train.seed"])])
    out = tmp_path / "sweep"
    report(axes, runs, out)
    printed = capsys.readouterr().out
    assert "| knn_gain | rank_pct | images_per_s |" in printed
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [float(r["rank_pct"]) for r in rows] == [10.0] * 3 + [50.0] * 3  # the last log window's
    assert (out / "plot_recipe.png").read_bytes()[:8] == PNG_MAGIC and not list(out.glob("heatmap_*"))
    assert f"curves: {out / 'curves.png'}" in printed
    overlaid = lines(draw([r.out for r in runs]))["loss"]
    assert set(overlaid) == {r.name for r in runs}

    (ax,) = seed_figure(axes, [dict(recipe=p["recipe"], **{"train.seed": p["train.seed"]},
                                    knn_top1=scores[p["recipe"]][int(p["train.seed"])], knn_gain=None)
                               for p in points(axes)]).axes
    (bars,) = ax.containers
    mean_line, _, (error_segments,) = bars
    assert list(mean_line.get_ydata()) == [31.0, 35.0]
    assert [seg[1][1] - seg[0][1] for seg in error_segments.get_segments()] == pytest.approx([2.0, 1.0])
    seeds = [y for line in ax.get_lines() if line.get_marker() == "." for y in line.get_ydata()]
    assert sorted(seeds) == sorted(sum(scores.values(), []))


def test_seed_axis_crossed_with_two_keys_draws_a_series_per_value(tmp_path):
    axes = parse_grid("recipe=baseline,sslight loss.alpha=auto,0.4 train.seed=0,1")
    table = [dict(p, knn_top1=30.0 + int(p["train.seed"]) + (p["recipe"] == "sslight"), knn_gain=None)
             for p in points(axes)]
    (ax,) = seed_figure(axes, table).axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["recipe=baseline", "recipe=sslight"]
    means = [list(bars[0].get_ydata()) for bars in ax.containers]
    assert means == [[30.5, 30.5], [31.5, 31.5]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["auto", "0.4"]
    assert not any(math.isnan(v) for m in means for v in m)
