"""Sweep grids: ``"views.local_size=96,128 loss.alpha=auto,0.4"`` -> one override list per run.

Keys are separated by spaces, a key's values by commas; a pair value (``views.global_scale``)
is written ``min:max``, e.g. ``views.global_scale=0.14:1.0,0.3:1.0``.
"""

from __future__ import annotations

import itertools
import typing
from dataclasses import dataclass

from sslight.config import ConfigError, Config, all_keys, apply_overrides, _closest

PAIR_SEPARATOR = ":"
NOT_SWEPT = ("train.out", "train.resume")  # the sweep sets these for every run


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[str, ...]  # as written in the grid (pairs with ':')


def is_pair(key: str) -> bool:
    return typing.get_origin(all_keys()[key]) is tuple


def override(key: str, value: str) -> str:
    """The ``key=value`` override of one grid value (pairs in the config's ``min,max`` form)."""
    return f"{key}={value.replace(PAIR_SEPARATOR, ',')}" if is_pair(key) else f"{key}={value}"


def _check_value(key: str, value: str) -> None:
    example = "e.g. views.global_scale=0.14:1.0,0.3:1.0"
    if is_pair(key):
        if value.count(PAIR_SEPARATOR) != 1:
            raise ConfigError(f"sweep {key}: value {value!r} is not a pair; write pairs as min:max "
                              f"and separate values by commas, {example}")
    elif PAIR_SEPARATOR in value:
        raise ConfigError(f"sweep {key}: value {value!r} has ':', which only pair keys take ({example})")
    apply_overrides(Config(), [override(key, value)])  # type, choice and key errors, one line each


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
            raise ConfigError(f"sweep: unknown key '{key}'{_closest(key, keys)}")
        if key in NOT_SWEPT:
            raise ConfigError(f"sweep: {key} cannot be swept; the sweep sets it for every run")
        if any(a.key == key for a in axes):
            raise ConfigError(f"sweep: key {key} appears twice; give all its values once: {key}=a,b")
        values = tuple(text.split(","))
        if not text or any(not v for v in values):
            raise ConfigError(f"sweep {key}={text!r}: empty value; expected {key}=value1,value2,...")
        if len(set(values)) != len(values):
            raise ConfigError(f"sweep {key}={text!r}: a value is repeated")
        for value in values:
            _check_value(key, value)
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
