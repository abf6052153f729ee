"""A sweep's grid and the runs it plans: ``"views.local_size=96,128 loss.alpha=auto,0.4"`` -> one
override list per run, each in its own folder.

Keys are separated by spaces, a key's values by commas. A pair is ``min,max`` as everywhere, in
parentheses when there are several: ``views.global_scale=(0.14,1.0),(0.3,1.0)``; one pair may go
without (``views.global_scale=0.3,1.0``); the earlier ``0.14:1.0,0.3:1.0`` is still read.
"""

from __future__ import annotations

import itertools
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path

from sslight.config import ConfigError, all_keys, closest_key
from sslight.recipes import build_config, parse

OLD_PAIR_SEPARATOR = ":"
PAIR_LIST = re.compile(r"\([^()]*\)(,\([^()]*\))*")  # (a,b),(c,d),...
NOT_SWEPT = ("train.out", "train.resume")  # the sweep sets these for every run
RESULT = "result.json"  # written last by a run (sweep/run.py): its presence means the run finished
OVERRIDES = "overrides.json"  # written at launch: a re-run with other settings must not reuse the folder


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[str, ...]  # as the config reads them; a pair as "min,max"


def is_pair(key: str) -> bool:
    return typing.get_origin(all_keys()[key]) is tuple


def split_values(key: str, text: str) -> tuple[str, ...]:
    """A key's values as written after ``key=``; pairs as ``min,max`` whichever way they were written."""
    if not is_pair(key):
        return tuple(text.split(","))
    if "(" in text or ")" in text:
        if not PAIR_LIST.fullmatch(text):
            raise ConfigError(f"sweep {key}={text!r}: expected pairs in parentheses separated by commas, "
                              f"e.g. {key}=(0.14,1.0),(0.3,1.0)")
        return tuple(text[1:-1].split("),("))
    if OLD_PAIR_SEPARATOR in text:
        return tuple(value.replace(OLD_PAIR_SEPARATOR, ",") for value in text.split(","))
    return (text,)


def parse_grid(spec: str) -> list[Axis]:
    """The axes of a grid, every value checked against its key's type and choices."""
    keys = all_keys()
    axes: list[Axis] = []
    for token in spec.split():
        if "=" not in token:
            raise ConfigError(f"sweep {token!r}: expected key=value1,value2,..., "
                              "e.g. SWEEP=\"views.local_size=96,128 loss.alpha=auto,0.4\"")
        key, text = token.split("=", 1)
        if key not in keys:
            raise ConfigError(f"sweep: unknown key '{key}'{closest_key(key, keys)}")
        if key in NOT_SWEPT:
            raise ConfigError(f"sweep: {key} cannot be swept; the sweep sets it for every run")
        if any(a.key == key for a in axes):
            raise ConfigError(f"sweep: key {key} appears twice; give all its values once: {key}=a,b")
        values = split_values(key, text)
        if not text or any(not v for v in values):
            raise ConfigError(f"sweep {key}={text!r}: empty value; expected {key}=value1,value2,...")
        if len(set(values)) != len(values):
            raise ConfigError(f"sweep {key}={text!r}: a value is repeated")
        for value in values:
            parse([f"{key}={value}"])  # type, choice and key errors, one line each
        axes.append(Axis(key, values))
    if not axes:
        raise ConfigError("sweep: empty grid; expected e.g. SWEEP=\"recipe=baseline,sslight\"")
    return axes


def points(axes: list[Axis]) -> list[dict[str, str]]:
    """Every combination of the axes' values, the last axis varying fastest."""
    return [dict(zip([a.key for a in axes], combo)) for combo in itertools.product(*(a.values for a in axes))]


def run_name(point: dict[str, str]) -> str:
    """The folder name of one run, readable and unique within the grid."""
    return "__".join(f"{key}={value}" for key, value in point.items())


@dataclass
class Planned:
    name: str
    point: dict[str, str]
    overrides: list[str]
    out: Path

    @property
    def finished(self) -> bool:
        return (self.out / RESULT).exists()

    @property
    def started(self) -> bool:
        return (self.out / OVERRIDES).exists()


def plan(axes: list[Axis], base: list[str], out: Path, config: list[str] = ()) -> list[Planned]:
    """Every run of the grid with its overrides (the short schedule, then ``config``: a config
    file's values, then ``base``, then the swept values), all checked before anything runs."""
    swept = {a.key for a in axes}
    for item in base:
        key = item.split("=", 1)[0].strip()
        if key in swept:
            raise ConfigError(f"{key} is both swept (SWEEP) and set ({item!r}); set it in one place")
        if key in NOT_SWEPT:
            raise ConfigError(f"{item!r}: a sweep sets {key} per run; use the sweep's OUT and RESUME")
    runs = []
    for point in points(axes):
        overrides = ["schedule=short", *config, *base, *(f"{k}={v}" for k, v in point.items())]
        build_config(overrides)  # bad values stop the sweep before any run starts
        name = run_name(point)
        runs.append(Planned(name, point, overrides, out / name))
    for r in runs:
        if r.started and json.loads((r.out / OVERRIDES).read_text()) != r.overrides:
            raise ConfigError(f"{r.out} holds a run with other settings; choose another OUT for this sweep")
    return runs
