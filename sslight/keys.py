"""Every config key with its default, type, allowed values and what ``sslight/config.py`` says of it,
read from the dataclasses themselves: ``sslight config --keys``, the flags' ``--help`` and, with
``--markdown``, the key table of docs/cli-and-config.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any

from sslight.config import Config, all_keys, get

FIELD_COMMENT = re.compile(r"^    (\w+): [^=]+=.*?  # (.*)$")


@dataclass(frozen=True)
class Key:
    name: str
    default: str
    type: str
    allowed: str  # the names a key of a registry takes, "" for the others
    note: str  # the field's comment in config.py


def notes() -> dict[str, str]:
    """Each dotted key's comment in config.py (the text after ``#`` on its line)."""
    found = {}
    hints = typing.get_type_hints(Config)
    sections = [("", Config)] + [(f.name + ".", hints[f.name]) for f in dataclasses.fields(Config)
                                 if dataclasses.is_dataclass(hints[f.name])]
    for prefix, cls in sections:
        for line in inspect.getsource(cls).splitlines():
            match = FIELD_COMMENT.match(line)
            if match:
                found[prefix + match.group(1)] = match.group(2)
    return found


def type_name(typ: Any) -> str:
    args = typing.get_args(typ)
    if typing.get_origin(typ) is tuple:
        return "pair min,max"
    base = next((a for a in args if a is not str), typ) if args else typ
    name = {bool: "bool", int: "int", float: "number", str: "text"}[base]
    return f"{name} or auto" if str in args and base is not str else name


def shown(value: Any) -> str:
    """A value as it is written on the command line."""
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return '""' if value == "" else str(value)


def keys(choices: dict[str, tuple[str, ...]]) -> list[Key]:
    """Every key in the order config.py declares them; ``choices`` as :func:`sslight.recipes.choices`."""
    said, defaults = notes(), Config()
    return [Key(name, shown(get(defaults, name)), type_name(typ), ", ".join(choices.get(name, ())),
                said.get(name, "")) for name, typ in all_keys().items()]


def text(rows: list[Key]) -> str:
    """One key a line: ``name = default  (type; one of ...)  note``."""
    width = max(len(f"{k.name} = {k.default}") for k in rows)
    lines = []
    for k in rows:
        kind = f"{k.type}; one of {k.allowed}" if k.allowed else k.type
        lines.append(f"{f'{k.name} = {k.default}':<{width}}  ({kind})" + (f"  {k.note}" if k.note else ""))
    return "\n".join(lines)


def markdown(rows: list[Key]) -> str:
    lines = ["| key | default | type | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for k in rows:
        cells = [f"`{k.name}`", f"`{k.default}`", k.type, k.allowed,
                 k.note.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

