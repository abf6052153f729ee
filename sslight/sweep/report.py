"""A sweep's results: markdown table (stdout and results.md), results.csv, and plots.

Plots show kNN top-1: one key swept -> a line over its values; two keys -> a heatmap; more
keys -> a line per key, each point the mean over the other keys' values. A ``train.seed`` axis
of several seeds is not drawn as a key: each setting of one or two other keys is a point with
its mean and standard deviation over the seeds (and each seed's value). ``curves.png`` overlays
every run's curves (:mod:`sslight.plot`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.figure import Figure

from sslight.plot import METRICS_FILE, records, save_curves
from sslight.sweep.grid import RESULT, Axis
from sslight.sweep.seeds import SEED, comparisons, spread
from sslight.table import Table

METRICS = ("knn_top1", "linear_top1", "linear_top5", "images_per_s", "wall_min")


def rows(axes: list[Axis], runs) -> list[dict]:
    table = []
    for run in runs:
        row = dict(run=run.name, **run.point)
        result = json.loads((run.out / RESULT).read_text()) if run.finished else {}
        for metric in METRICS:
            row[metric] = result.get(metric)
        row["knn_top1_init"] = _init_knn(run.out) if result else None
        row["knn_gain"] = None if row["knn_top1_init"] is None else row["knn_top1"] - row["knn_top1_init"]
        row["rank_pct"] = _last_rank(run.out)
        row["status"] = "resumed" if result.get("resumed") else ("done" if result else "failed")
        table.append(row)
    return table


def _init_knn(out: Path) -> float | None:
    """kNN top-1 at initialisation, where the run measured it (the short schedule does)."""
    return next((r["knn_top1"] for r in records(out) if r["kind"] == "init"), None)


def _last_rank(out: Path) -> float | None:
    """The last log window's rank fraction, in %: a low one means the run's features collapsed."""
    if not (out / METRICS_FILE).exists():
        return None
    ranks = [r["rank_fraction"] for r in records(out) if r["kind"] == "train" and "rank_fraction" in r]
    return 100 * ranks[-1] if ranks else None


def _mean(values: list) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def plot(axes: list[Axis], table: list[dict], out: Path) -> list[Path]:
    seeded = any(a.key == SEED and len(a.values) > 1 for a in axes)
    others = [a for a in axes if a.key != SEED]
    if seeded and 1 <= len(others) <= 2:
        named = {f"plot_{'_'.join(a.key for a in others)}.png": seed_figure(axes, table)}
    elif len(axes) == 2:
        named = {f"heatmap_{axes[0].key}_{axes[1].key}.png": _heatmap(*axes, table)}
    else:
        swept = others if seeded and others else axes
        named = {f"plot_{axis.key}.png": _line(axis, len(swept) > 1, table) for axis in swept}
    for name, fig in named.items():
        fig.savefig(out / name, bbox_inches="tight", dpi=100)
    return [out / name for name in named]


def _heatmap(a: Axis, b: Axis, table: list[dict]) -> Figure:
    grid = [[_mean([r["knn_top1"] for r in table if r[a.key] == va and r[b.key] == vb]) for vb in b.values]
            for va in a.values]
    fig = Figure(figsize=(1.5 + 1.2 * len(b.values), 1.2 + 0.8 * len(a.values)))
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="viridis")
    ax.set_xticks(range(len(b.values)), b.values)
    ax.set_yticks(range(len(a.values)), a.values)
    ax.set_xlabel(b.key)
    ax.set_ylabel(a.key)
    for i, line in enumerate(grid):
        for j, value in enumerate(line):
            ax.text(j, i, "-" if math.isnan(value) else f"{value:.1f}", ha="center", va="center", color="w")
    fig.colorbar(image, ax=ax, label="kNN top-1 (%)")
    return fig


def _line(axis: Axis, averaged: bool, table: list[dict]) -> Figure:
    means = [_mean([r["knn_top1"] for r in table if r[axis.key] == v]) for v in axis.values]
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot(range(len(axis.values)), means, marker="o")
    ax.set_xticks(range(len(axis.values)), axis.values)
    ax.set_xlabel(axis.key)
    ax.set_ylabel("kNN top-1 (%)" + (" (mean over other keys)" if averaged else ""))
    return fig


def seed_figure(axes: list[Axis], table: list[dict]) -> Figure:
    """kNN top-1 over the last non-seed key's values, a series per value of the other non-seed
    key if there is one: each point the mean over the seeds with a bar of one standard deviation
    (the ``spread`` table's numbers), each seed's own value a faint dot beside it."""
    others = [a for a in axes if a.key != SEED]
    x, series = others[-1], others[0] if len(others) == 2 else None
    stats = {row[:len(others)]: row[len(others) + 1:len(others) + 3] for row in spread(axes, table).rows}
    groups = series.values if series else (None,)
    fig = Figure(figsize=(1.5 + 1.3 * len(x.values), 3.5))
    ax = fig.subplots()
    for i, group in enumerate(groups):
        shift = 0.08 * (i - (len(groups) - 1) / 2)  # series side by side, so their bars do not hide each other
        keys = [(group, v) if series else (v,) for v in x.values]
        means = [math.nan if stats[k][0] is None else stats[k][0] for k in keys]
        stds = [stats[k][1] or 0.0 for k in keys]
        label = f"{series.key}={group}" if series else None
        bars = ax.errorbar([j + shift for j in range(len(x.values))], means, yerr=stds, marker="o", capsize=4,
                           label=label)
        for j, v in enumerate(x.values):
            seeds = [r["knn_top1"] for r in table if r[x.key] == v and r["knn_top1"] is not None
                     and (series is None or r[series.key] == group)]
            ax.plot([j + shift + 0.03] * len(seeds), seeds, ".", color=bars.lines[0].get_color(), alpha=0.4)
    ax.set_xticks(range(len(x.values)), x.values)
    ax.set_xlabel(x.key)
    n = len(next(a for a in axes if a.key == SEED).values)
    ax.set_ylabel(f"kNN top-1 (%), mean ± std over {n} seeds", fontsize=9)
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def report(axes: list[Axis], runs, out: Path) -> None:
    table = rows(axes, runs)
    columns = ["run", *(a.key for a in axes), "knn_top1"]
    if any(r["knn_top1_init"] is not None for r in table):
        columns += ["knn_top1_init", "knn_gain"]
    if any(r["linear_top1"] is not None for r in table):
        columns += ["linear_top1", "linear_top5"]
    if any(r["rank_pct"] is not None for r in table):
        columns += ["rank_pct"]
    columns += ["images_per_s", "wall_min", "status"]
    results = Table("", columns, number=".1f")
    for row in table:
        results.add(*(row[c] for c in columns))
    text = results.markdown() + "\n"
    if any(a.key == SEED and len(a.values) > 1 for a in axes):
        text += "\n" + spread(axes, table).markdown() + "\n"
        if differences := comparisons(axes, table):
            text += "\n" + differences.markdown() + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    results.write_csv(out / "results.csv")
    print(text, end="", flush=True)
    for path in plot(axes, table, out):
        print(f"plot: {path}", flush=True)
    if curves := save_curves([r.out for r in runs if (r.out / METRICS_FILE).exists()], out / "curves.png"):
        print(f"curves: {curves} (every run)", flush=True)
