"""Whose output folder it is. A run writes only into a folder that holds nothing of another run,
or the run it continues (same settings, bar those a resume may change), or one it was told to
replace (``train.overwrite=true``); and it resumes from the newest checkpoint that reads.
Everything here only reads, so a refused start leaves the folder as it was."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sslight import checkpoint
from sslight.config import AUTO, Config, ConfigError, changes


@dataclass
class Claim:
    resume_from: Path | None
    replacing: list[Path] = field(default_factory=list)  # checkpoints of the run train.overwrite replaces
    notes: list[str] = field(default_factory=list)  # printed once when the run starts


def saved_config(out: Path) -> dict | None:
    """The config.json a run left in ``out``, if any (an unreadable one counts as a run's too)."""
    path = out / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def describe(out: Path, held: list[Path], saved: dict | None) -> str:
    """"runs/x holds a run (2 checkpoints, mnv2 dino, step 781)"."""
    what = [f"{len(held)} checkpoint{'s' if len(held) != 1 else ''}" if held else "no checkpoint yet"]
    if saved and isinstance(saved.get("model"), dict):
        what.append(f"{saved['model'].get('name', '?')} {saved.get('method', '?')}")
    if held:
        what.append(f"step {int(checkpoint.PATTERN.match(held[-1].name).group(2))}")
    return f"{out} holds a run ({', '.join(what)})"


def resume_source(cfg: Config, out: Path, held: list[Path]) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from, and warnings about newer ones that do not read."""
    resume = cfg.train.resume
    if resume == AUTO:
        found, warnings = checkpoint.newest_readable(out, "train.resume") if held else (None, [])
        if held and found is None:
            raise ConfigError(f"train.resume='auto': none of the {len(held)} checkpoints in {out} reads "
                              f"({warnings[0].removeprefix('skipped ')})")
        return found, warnings
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"train.resume={resume!r}: no such checkpoint file")
    checkpoint.read(path, "train.resume", peek=True)
    return path, []


def claim(cfg: Config, out: Path) -> Claim:
    t = cfg.train
    held = checkpoint.complete(out) if out.is_dir() else []
    in_folder = saved_config(out)
    if t.overwrite:
        if t.resume:
            raise ConfigError(f"train.overwrite=true starts afresh; it cannot also continue a run "
                              f"(train.resume={t.resume!r})")
        note = [f"train.overwrite=true: {describe(out, held, in_folder)}; starting afresh, its checkpoints "
                "are removed once this run's first one is written"] if held or in_folder is not None else []
        return Claim(None, held, note)
    if not t.resume:
        if held or in_folder is not None:
            raise ConfigError(f"{describe(out, held, in_folder)}; continue it with RESUME=auto, choose another OUT, "
                              "or replace it with train.overwrite=true")
        return Claim(None)
    resume_from, notes = resume_source(cfg, out, held)
    sources = [(f"checkpoint {resume_from}", checkpoint.read(resume_from, "train.resume", peek=True)["config"])] \
        if resume_from else []
    if in_folder:
        sources.append((f"the run in {out}", in_folder))
    allowed: list[str] = []
    for source, saved in sources:
        differ, may = changes(saved, cfg)
        if differ:
            raise ConfigError(f"{source} has other settings: {', '.join(differ)}; resume with its values, "
                              "or choose another OUT")
        allowed += [c for c in may if c not in allowed]
    if allowed:
        notes.append(f"resuming with changed settings: {', '.join(allowed)}")
    return Claim(resume_from, [], notes)
