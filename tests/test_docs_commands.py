"""Every command the README and the pages under docs/ show runs as written.

Commands are the lines of ```bash blocks and the inline code spans that start with ``make``,
``sslight``, ``python -m sslight`` or ``torchrun``. Each is dry-run, without training: a make
command with ``make -n`` (it must succeed, name only variables the Makefile defines, and the
sslight command it expands to is checked in turn); an sslight command by the CLI's own parser, then a
train command by ``sslight config`` (its config resolved as training would, nothing run) and a
sweep by planning every run of its grid. Paths that stand for the reader's own files
(``/path/to/imagenet``, a checkpoint a run will write) cannot exist here: those values are left
out of the resolution, everything else is checked.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHONS = ("python", "python3", ".venv/bin/python")
SHELL_ENDS = (">", ">>", "2>&1", "&", "|", "&&", ";")  # what follows is the shell's, not the command's
# flags and keys whose values are the reader's own files
PATH_FLAGS = ("--data", "--teacher", "--resume")
PATH_KEYS = ("data.path", "teacher.path", "teacher.head_path", "train.resume")


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every ```bash block, continuation lines joined."""
    lines, in_bash, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_bash = not in_bash and line.strip() == "```bash"
            continue
        if not in_bash:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    return lines


def inline_spans(text: str) -> list[tuple[int, str]]:
    """(line number, span) of inline code outside fenced blocks."""
    spans, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            spans += [(number, span) for span in re.findall(r"`([^`]+)`", line)]
    return spans


def command_words(line: str) -> list[str] | None:
    """The words of a command this file checks (environment assignments, ``nohup`` and shell
    redirections dropped), or None when the line is some other command or no command."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word in SHELL_ENDS or word.startswith((">", "2>")):
            words = words[:i]
            break
    while words and (re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]) or words[0] == "nohup"):
        words = words[1:]
    if not words:
        return None
    if words[0] in ("make", "sslight", "torchrun"):
        return words
    if words[0] in PYTHONS and words[1:3] in (["-m", "sslight"], ["-m", "torch.distributed.run"]):
        return words
    return None


def documented_commands() -> list[tuple[str, str, bool]]:
    """(where, command, named): ``named`` for an inline span that only names a command (`make
    sweep`, `sslight plot`), which is checked to exist; every other command is dry-run whole."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for spans, inline in ((shell_lines(text), False), (inline_spans(text), True)):
            for number, line in spans:
                words = command_words(line)
                if words:
                    rest = words[3:] if words[0] in PYTHONS else words[1:]  # after the program's name
                    named = inline and len(rest) <= 1 and not any(w.startswith("-") for w in rest)
                    found.append((f"{page.relative_to(ROOT)}:{number}", shlex.join(words), named))
    return found


COMMANDS = documented_commands()


def makefile_variables() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(?:\?|:|\+)?=", text, re.M))


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*):(?!=)", (ROOT / "Makefile").read_text(), re.M))


def check_make(words: list[str], tmp_path: Path) -> None:
    known = makefile_variables()
    for word in words[1:]:
        if "=" in word:
            name = word.split("=", 1)[0]
            assert name in known, f"{name}= is not a Makefile variable (known: {', '.join(sorted(known))})"
    # a clean environment: no MAKEFLAGS of an outer `make test`, no user data directory
    done = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SSLIGHT_DATA": str(tmp_path)})
    assert done.returncode == 0, done.stderr.strip()
    if not any("=" in word for word in words[1:]):
        return  # nothing given: an sslight command it runs has only its defaults
    for line in done.stdout.replace("\\\n", " ").splitlines():  # recipe lines continued with \
        expanded = shlex.split(line)
        if "sslight" in expanded and expanded[expanded.index("sslight") - 1] == "-m":
            check_sslight(expanded[expanded.index("sslight") + 1:], tmp_path)


def check_torchrun(words: list[str], tmp_path: Path) -> None:
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(words)  # torchrun's own flags, as torchrun reads them
    assert args.module and args.training_script == "sslight", "torchrun runs sslight with -m sslight"
    check_sslight(list(args.training_script_args), tmp_path)


def own_files_left_out(argv: list[str]) -> list[str]:
    """``argv`` without the values that name the reader's files (absent here)."""
    kept, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word in PATH_FLAGS and i + 1 < len(argv):
            value = argv[i + 1]
            if value not in ("", "auto") and not (ROOT / value).exists():
                skip = True
                continue
        key, _, value = word.partition("=")
        if key in PATH_KEYS and value and value != "auto" and not (ROOT / value).exists():
            continue
        kept.append(word)
    return kept


def parsed(argv: list[str]):
    from sslight.cli import parser

    args, extra = parser().parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-")]
    assert not unknown, f"unknown flags {unknown}"
    args.overrides = list(getattr(args, "overrides", [])) + extra
    return args


def check_sslight(argv: list[str], tmp_path: Path) -> None:
    from sslight.cli import parser

    if not argv or "--help" in argv or "--version" in argv:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as stop:
            parser().parse_args(argv or ["--help"])
        assert stop.value.code == 0
        return
    argv = own_files_left_out(argv)
    args = parsed(argv)
    if args.command in ("train", "config"):
        resolve_train(argv)
    elif args.command == "sweep":
        plan_sweep(args, tmp_path)
    elif args.command == "eval":
        from sslight.recipes import parse

        tasks = [t for t in args.tasks.split(",") if t]
        assert set(tasks) <= {"knn", "linear", "semisup"}, f"--tasks {args.tasks}"
        parse(args.overrides)


def resolve_train(argv: list[str]) -> None:
    """``sslight config`` with the train (or config) command's flags: its config resolved here,
    nothing run."""
    from sslight.cli import main

    printed, said = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(said):
        code = main(["config", *argv[1:]])
    assert code == 0 and printed.getvalue(), said.getvalue().strip()


def plan_sweep(args, tmp_path: Path) -> None:
    """Every run of the grid planned and its config checked, as the sweep does before it starts."""
    from sslight.cli import overrides_from
    from sslight.config import as_overrides, read_file
    from sslight.sweep.grid import parse_grid, plan

    config = as_overrides(read_file(args.config)) if args.config else []
    plan(parse_grid(args.sweep), overrides_from(args), tmp_path / "sweep", config)


def check_named(words: list[str]) -> None:
    """A command named in prose exists: the Makefile target, the sslight subcommand, the launcher."""
    if words[0] == "make":
        unknown = set(words[1:]) - makefile_targets()
        assert not unknown, f"no Makefile target {sorted(unknown)}"
    elif "sslight" in words[:3]:
        check_sslight([*words[words.index("sslight") + 1:], "--help"], Path())
    else:
        from torch.distributed.run import get_args_parser  # noqa: F401 (torchrun is there)


@pytest.mark.parametrize("where,command,named", COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_documented_command_runs_as_written(where, command, named, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    words = shlex.split(command)
    if named:
        check_named(words)
    elif words[0] == "make":
        check_make(words, tmp_path)
    elif words[0] == "torchrun":
        check_torchrun(words[1:], tmp_path)
    elif words[0] in PYTHONS and words[2] == "torch.distributed.run":
        check_torchrun(words[3:], tmp_path)
    else:
        check_sslight(words[3:] if words[0] in PYTHONS else words[1:], tmp_path)


def test_the_commands_are_found():
    """The extraction itself: the README's quick start comes first, every page contributes."""
    readme = [command for where, command, _ in COMMANDS if where.startswith("README.md")]
    assert readme[:2] == ["make train MODEL=r18 SCHEDULE=short", "make test"]
    assert len(COMMANDS) > 40


def test_readme_fits_a_screen():
    assert len((ROOT / "README.md").read_text().splitlines()) < 150


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_links_lead_somewhere(page):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
        if not target.startswith(("http://", "https://")):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_key_table_is_generated_from_the_config():
    """docs/cli-and-config.md's key table is what ``sslight config --keys --markdown`` prints now;
    after a change to sslight/config.py, paste its output between the page's markers again."""
    from sslight.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["config", "--keys", "--markdown"]) == 0
    page = (ROOT / "docs" / "cli-and-config.md").read_text()
    table = page.split("<!-- BEGIN GENERATED KEY TABLE")[1].split("-->", 1)[1].split("<!-- END GENERATED KEY TABLE")[0]
    assert table.strip() == printed.getvalue().strip()
