"""A sweep's results: markdown table (stdout and results.md), results.csv, and plots.

Plots show kNN top-1: one key swept -> a line over its values; two keys -> a heatmap; more
keys -> a line per key, each point the mean over the other keys' values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from sslight.sweep.grid import RESULT, Axis  # noqa: E402
from sslight.sweep.seeds import SEED, comparisons, spread  # noqa: E402
from sslight.table import Table  # noqa: E402
from sslight.train.log import read  # noqa: E402

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
        row["status"] = "resumed" if result.get("resumed") else ("done" if result else "failed")
        table.append(row)
    return table


def _init_knn(out: Path) -> float | None:
    """kNN top-1 at initialisation, where the run measured it (the short schedule does)."""
    return next((r["knn_top1"] for r in read(out / "metrics.jsonl") if r["kind"] == "init"), None)


def _mean(values: list) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def plot(axes: list[Axis], table: list[dict], out: Path) -> list[Path]:
    written = []
    if len(axes) == 2:
        a, b = axes
        grid = [[_mean([r["knn_top1"] for r in table if r[a.key] == va and r[b.key] == vb]) for vb in b.values]
                for va in a.values]
        fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(b.values), 1.2 + 0.8 * len(a.values)))
        image = ax.imshow(grid, cmap="viridis")
        ax.set_xticks(range(len(b.values)), b.values)
        ax.set_yticks(range(len(a.values)), a.values)
        ax.set_xlabel(b.key)
        ax.set_ylabel(a.key)
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                ax.text(j, i, "-" if math.isnan(value) else f"{value:.1f}", ha="center", va="center", color="w")
        fig.colorbar(image, ax=ax, label="kNN top-1 (%)")
        written.append(out / f"heatmap_{a.key}_{b.key}.png")
        fig.savefig(written[-1], bbox_inches="tight", dpi=100)
        plt.close(fig)
        return written
    for axis in axes:
        means = [_mean([r["knn_top1"] for r in table if r[axis.key] == v]) for v in axis.values]
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot(range(len(axis.values)), means, marker="o")
        ax.set_xticks(range(len(axis.values)), axis.values)
        ax.set_xlabel(axis.key)
        ax.set_ylabel("kNN top-1 (%)" + (" (mean over other keys)" if len(axes) > 1 else ""))
        written.append(out / f"plot_{axis.key}.png")
        fig.savefig(written[-1], bbox_inches="tight", dpi=100)
        plt.close(fig)
    return written


def report(axes: list[Axis], runs, out: Path) -> None:
    table = rows(axes, runs)
    columns = ["run", *(a.key for a in axes), "knn_top1"]
    if any(r["knn_top1_init"] is not None for r in table):
        columns += ["knn_top1_init", "knn_gain"]
    if any(r["linear_top1"] is not None for r in table):
        columns += ["linear_top1", "linear_top5"]
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
