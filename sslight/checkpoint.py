"""Checkpoints written atomically (temp file, fsync, rename), read with one-line errors; the newest
readable one resumes."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import torch

from sslight.config import ConfigError

PATTERN = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")
KEEP = 2  # the newest complete checkpoints kept; older ones are removed after a new one lands


def name(epoch: int, step: int) -> str:
    return f"ckpt-e{epoch:04d}-s{step:08d}.pt"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(obj, path: Path) -> None:
    """Write ``obj`` so that ``path`` either does not exist or holds the whole object."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    """A JSON result file, replaced atomically: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def complete(out: Path) -> list[Path]:
    """Complete checkpoints in ``out``, oldest first (temp files never match the pattern)."""
    found = [(int(m.group(2)), int(m.group(1)), p) for p in out.glob("ckpt-*.pt") if (m := PATTERN.match(p.name))]
    return [p for *_, p in sorted(found)]


def save(obj, out: Path, epoch: int, step: int, replacing: list[Path] = ()) -> Path:
    """Writes the checkpoint, then removes ``replacing`` (another run's checkpoints, once this one
    is safely on disk), then all but the newest ``KEEP``."""
    path = out / name(epoch, step)
    save_atomic(obj, path)
    for old in replacing:
        if old != path:
            old.unlink(missing_ok=True)
    for old in complete(out)[:-KEEP]:
        old.unlink(missing_ok=True)
    # temp files of a writer killed mid-write: never loaded, but each is a checkpoint's size
    for partial in out.glob(".ckpt-*.pt.tmp-*"):
        partial.unlink(missing_ok=True)
    return path


def latest(out: Path) -> Path | None:
    found = complete(out)
    return found[-1] if found else None


def load(path: Path, device: torch.device) -> dict:
    return torch.load(path, map_location=device, weights_only=False)


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read(path: Path, key: str, device: torch.device = torch.device("cpu"), peek: bool = False) -> dict:
    """A checkpoint of this project; any other file, or one that cannot be read, is a one-line
    ConfigError naming ``key`` and the file. ``peek`` maps the tensors instead of reading them,
    for a look at the config."""
    try:
        # torch's mapping needs its zip format; any other file is read, to name the real problem
        state = torch.load(path, map_location=device, weights_only=False, mmap=peek and zipfile.is_zipfile(path))
    except Exception as exc:  # a file of any other kind, truncated or garbled: say so on one line
        raise ConfigError(f"{key}={str(path)!r}: not a readable sslight checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict) or not {"config", "method"} <= state.keys():
        raise ConfigError(f"{key}={str(path)!r}: not an sslight checkpoint (it holds no run config and weights)")
    return state


def newest_readable(out: Path, key: str) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint of ``out`` that reads (None if there is none), and a
    warning for each newer one that does not."""
    warnings = []
    for path in reversed(complete(out)):
        try:
            read(path, key, peek=True)
            return path, warnings
        except ConfigError as exc:
            warnings.append(f"skipped {exc}")
    return None, warnings
