"""Repeats over seeds: when a sweep has a ``train.seed`` axis, the mean and standard deviation of
each setting over its seeds, and for every axis of two values whether they differ by more than
the seed-to-seed noise (Welch's t-test, which does not assume equal variances)."""

from __future__ import annotations

import statistics

from sslight.sweep.grid import Axis, points
from sslight.table import Table

SEED = "train.seed"
SIGNIFICANCE = 0.05  # two-sided


def _values(table: list[dict], where: dict[str, str], metric: str) -> list[float]:
    return [r[metric] for r in table if r[metric] is not None and all(r[k] == v for k, v in where.items())]


def spread(axes: list[Axis], table: list[dict]) -> Table:
    """One row per setting of the axes other than the seed: n, and mean and standard deviation of
    the final kNN top-1 and of its gain over initialisation."""
    others = [a for a in axes if a.key != SEED]
    out = Table("over seeds", [*(a.key for a in others), "seeds", "knn_top1 mean", "knn_top1 std",
                               "gain mean", "gain std"], number=".2f")
    for setting in points(others):
        knn, gain = _values(table, setting, "knn_top1"), _values(table, setting, "knn_gain")
        out.add(*setting.values(), len(knn), *_mean_std(knn), *_mean_std(gain))
    return out


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def comparisons(axes: list[Axis], table: list[dict]) -> Table | None:
    """For each axis of exactly two values, at each setting of the remaining axes: the difference
    in final kNN top-1 between its second and first value, and Welch's p-value over the seeds."""
    from scipy.stats import ttest_ind  # imported here: the GPU machine's carried wheels leave scipy out
    others = [a for a in axes if a.key != SEED]
    out = Table("differences over seeds (Welch's t-test)", ["axis", "second - first", "at", "difference",
                                                           "p", f"beyond the seed noise (p < {SIGNIFICANCE})"],
                number=".3g")
    for axis in (a for a in others if len(a.values) == 2):
        first, second = axis.values
        for rest in points([a for a in others if a is not axis]):
            a = _values(table, {**rest, axis.key: first}, "knn_top1")
            b = _values(table, {**rest, axis.key: second}, "knn_top1")
            if len(a) < 2 or len(b) < 2:
                continue
            p = float(ttest_ind(b, a, equal_var=False).pvalue)
            at = ", ".join(f"{k}={v}" for k, v in rest.items()) or "-"
            out.add(axis.key, f"{second} - {first}", at, statistics.fmean(b) - statistics.fmean(a), p,
                    "yes" if p < SIGNIFICANCE else "no")
    return out if out.rows else None
