"""The command line a user meets: --version, --help (quick, with choices, defaults and examples),
`sslight config`, errors naming inputs as the user typed them, and Make agreeing with the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslight import __version__
from sslight.cli import HELP_CHOICES, VIA_MAKE, main
from sslight.config import all_keys

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli_user(monkeypatch):
    monkeypatch.delenv(VIA_MAKE, raising=False)


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"sslight {__version__}"


def test_help_imports_no_torch_and_shows_choices_defaults_and_examples():
    # torch alone takes seconds to import; --help must answer without it
    code = ("import sys\nfrom sslight.cli import main\n"
            "for command in ('train', 'sweep', 'eval', 'export', 'plot', 'config'):\n"
            "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())  # argparse wraps lines at the terminal's width
    assert out.endswith("NO TORCH")
    assert "--model MODEL model.name; one of mnv2, r18, r34, r50, vit_t16, vit_t32, vit_s16; default mnv2" in out
    assert "--epochs EPOCHS train.epochs; default 100" in out
    assert "sslight train --model r18 --schedule short" in out  # the examples
    assert out.count("examples:") == 6


def test_the_help_choices_are_the_registries_names():
    from sslight.recipes import choices

    assert HELP_CHOICES == {key: choices()[key] for key in HELP_CHOICES}


def test_config_prints_the_resolved_config_and_writes_nothing(tmp_path, monkeypatch, capsys, cli_user):
    from sslight.config import read_file
    from sslight.recipes import build_config

    monkeypatch.chdir(tmp_path)
    assert main(["config", "--model", "r18", "--schedule", "short", "optim.lr=0.3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["model"]["name"], shown["optim"]["lr"], shown["train"]["epochs"]) == ("r18", 0.3, 3)
    assert shown["train"]["out"] == "runs/r18_dino_sslight_short" and shown["data"]["loader"] != "auto"
    assert list(tmp_path.iterdir()) == []

    assert main(["config", "--model", "r18", "--format", "yaml"]) == 0
    (tmp_path / "r18.yaml").write_text(capsys.readouterr().out)
    again = read_file(str(tmp_path / "r18.yaml"))
    assert again["views"]["global_scale"] == [0.3, 1.0] and again["model"]["name"] == "r18"
    assert build_config(["model.name=r18"], 32).views.local_size == again["views"]["local_size"]

    assert main(["config", "--model", "r99"]) == 2
    assert "--model 'r99' is not one of" in capsys.readouterr().err


def test_config_keys_lists_every_key_with_default_type_and_allowed_values(capsys):
    assert main(["config", "--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" = ")[0] for line in lines] == list(all_keys())
    model = next(line for line in lines if line.startswith("model.name = "))
    assert model.startswith("model.name = mnv2") and "one of mnv2, r18" in model
    assert any(line.startswith("views.global_scale = 0.3,1") and "(pair min,max)" in line for line in lines)
    assert any(line.startswith("data.workers = auto") and "(int or auto)" in line and "cores" in line
               for line in lines)

    assert main(["config", "--keys", "--markdown"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| key | default | type | allowed | meaning |" and len(table) == len(all_keys()) + 2
    assert "| `train.epochs` | `100` | int |" in "\n".join(table)


@pytest.mark.parametrize("args, via_make, expected, unexpected", [
    (["train", "--model", "foo"], False, "--model 'foo' is not one of mnv2", "model.name"),
    (["train", "--model", "foo"], True, "MODEL='foo' is not one of mnv2", "--model"),
    (["train", "model.name=foo"], False, "model.name='foo' is not one of mnv2", "--model"),
    (["train", "--epochs", "0"], False, "--epochs 0: must be >= 1", "train.epochs"),
    (["train", "--epochs", "0"], True, "EPOCHS=0: must be >= 1", "train.epochs"),
    (["train", "lr=0.1"], False, "unknown key 'lr'; did you mean 'optim.lr'?", "MODEL"),
    (["eval"], False, "give --ckpt, a checkpoint file or a run folder, e.g. --ckpt runs/", "CKPT"),
    (["eval"], True, "give CKPT, a checkpoint file or a run folder, e.g. CKPT=runs/", "--ckpt"),
    (["export", "--ckpt", "nowhere"], False, "--ckpt 'nowhere': no such checkpoint file or run folder", "CKPT"),
    (["export", "--ckpt", "nowhere"], True, "CKPT='nowhere': no such checkpoint file or run folder", "--ckpt"),
    (["sweep", "--sweep", "recipe=baseline", "--resume", "yes"], False, "--resume 'yes': a sweep takes", "RESUME"),
    (["sweep", "--sweep", "recipe=baseline", "--linear", "maybe"], True, "LINEAR='maybe': expected a boolean",
     "--linear"),
])
def test_errors_name_each_input_as_the_user_typed_it(args, via_make, expected, unexpected, tmp_path, monkeypatch,
                                                      capsys):
    monkeypatch.chdir(tmp_path)
    if via_make:
        monkeypatch.setenv(VIA_MAKE, "1")
    else:
        monkeypatch.delenv(VIA_MAKE, raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and unexpected not in err, err


def test_plot_of_a_folder_that_is_no_run_is_one_line(tmp_path, capsys, cli_user):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err


def make(*args: str) -> subprocess.CompletedProcess:
    """``make -n``: what a target would run, without running it; not as a sub-make of the ``make
    test`` running these tests, whose command-line variables (PYTEST_ARGS) would reach it."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL")}
    return subprocess.run(["make", "-n", "-s", *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env=env)


def test_make_passes_every_variable_a_target_reads():
    run = make("sweep", "SCHEDULE=short", "TEACHER=t.pt", "CONFIG=base.yaml", "SWEEP=recipe=baseline,sslight")
    assert run.returncode == 0, run.stderr
    command = " ".join(run.stdout.split())
    assert '--schedule "short"' in command and '--teacher "t.pt"' in command and '--config "base.yaml"' in command
    assert "SSLIGHT_VIA_MAKE=1" in command
    plot = make("plot", "RUNS=runs/a runs/b", "PLOT_OUT=both.png")
    assert plot.returncode == 0 and "sslight plot runs/a runs/b --out \"both.png\"" in plot.stdout


@pytest.mark.parametrize("args, unread", [
    (["sweep", "NPROC=4"], "NPROC is not read by 'make sweep'"),
    (["eval", "CKPT=x", "STEPS=1"], "STEPS is not read by 'make eval'"),
    (["export", "CKPT=x", "NPROC=2"], "NPROC is not read by 'make export'"),
    (["test", "MODEL=r18"], "MODEL is not read by 'make test'"),
])
def test_make_refuses_a_variable_the_target_does_not_read(args, unread):
    run = make(*args)
    assert run.returncode != 0 and unread in run.stderr and "it reads" in run.stderr


@pytest.mark.parametrize("flag, hint", [("--lr", "did you mean optim.lr=...?"), ("--modle", "did you mean --model?")])
def test_an_unknown_flag_suggests_the_key_or_the_flag_it_may_mean(flag, hint, capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", flag, "1"])
    assert done.value.code == 2 and hint in capsys.readouterr().err


def test_a_reader_that_closes_the_pipe_early_ends_the_output_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "sslight", "config", "--keys"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("method = dino")
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in proc.stderr.read()
