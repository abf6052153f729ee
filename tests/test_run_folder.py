"""Nothing lost: a run folder is written only by the run it holds (or one told to replace it),
a resume with other settings or an unreadable checkpoint stops with one line, and the files
already there stay byte for byte as they were."""

import hashlib
import shutil

import pytest
import torch

from sslight import checkpoint
from sslight.cli import main
from tests.conftest import TINY

QUICK = [*TINY, "--batch", "8", "eval.every=0", "eval.bank_limit=40", "eval.query_limit=20"]


def train(out, data, *args) -> int:
    return main(["train", "--out", str(out), "--data", str(data), *QUICK, *args])


def digests(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sslight: error: "), err
    return err


@pytest.fixture(scope="module")
def held_once(cifar_small, tmp_path_factory):
    """A ResNet-18 DINO run of two steps, trained once for the module: checkpoints at steps 1 and 2."""
    out = tmp_path_factory.mktemp("held") / "run"
    assert train(out, cifar_small, "--model", "r18", "--steps", "2", "train.ckpt_every=1") == 0
    return out


@pytest.fixture
def held(held_once, tmp_path):
    """A folder holding that run, this test's own copy (tests resume, truncate and overwrite it)."""
    return shutil.copytree(held_once, tmp_path / "run")


def test_a_new_run_into_a_held_folder_is_refused_and_changes_nothing(held, cifar_small, capsys):
    before = digests(held)
    capsys.readouterr()
    assert train(held, cifar_small, "--model", "mnv2", "--steps", "1") == 2
    err = one_line(capsys)
    assert f"{held} holds a run (2 checkpoints, r18 dino, step 2); continue it with --resume auto" in err
    assert digests(held) == before


def test_a_resume_with_other_settings_names_every_differing_key(held, cifar_small, capsys):
    before = digests(held)
    capsys.readouterr()
    assert train(held, cifar_small, "--model", "mnv2", "--resume", "auto", "views.n_local=4", "--steps", "3") == 2
    err = one_line(capsys)
    assert "has other settings: " in err
    assert "model.name 'r18' -> 'mnv2'" in err and "views.n_local 6 -> 4" in err
    assert "train.steps" not in err  # a resume may change how long the run goes
    assert digests(held) == before


def test_a_resume_may_change_its_length_and_says_so_once(held, cifar_small, capsys):
    capsys.readouterr()
    assert train(held, cifar_small, "--model", "r18", "--resume", "auto", "--steps", "3", "train.log_every=2") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("resuming with changed settings: ") == 1
    assert "train.steps 2 -> 3" in err and "train.log_every 1 -> 2" in err
    assert checkpoint.load(checkpoint.latest(held), torch.device("cpu"))["step"] == 3


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(held, cifar_small, capsys):
    newest = checkpoint.latest(held)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    previous = checkpoint.complete(held)[0]
    capsys.readouterr()
    assert train(held, cifar_small, "--model", "r18", "--resume", "auto", "--steps", "4") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"skipped train.resume='{newest}': not a readable sslight checkpoint (RuntimeError: " in err
    assert f"resumed from {previous} at epoch 0, step 1" in err
    last = checkpoint.load(checkpoint.latest(held), torch.device("cpu"))
    assert last["step"] == 4


@pytest.mark.parametrize("content, message", [
    ("truncated", "not a readable sslight checkpoint (RuntimeError: PytorchStreamReader failed"),
    ("other", "not an sslight checkpoint (it holds no run config and weights)"),
    ("garbage", "not a readable sslight checkpoint (UnpicklingError"),
])
def test_unreadable_or_foreign_files_are_one_line_errors(held, cifar_small, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.pt"
    if content == "truncated":
        good = checkpoint.latest(held).read_bytes()
        bad.write_bytes(good[: len(good) // 2])
    elif content == "other":
        torch.save({"weights": torch.zeros(2)}, bad)
    else:
        bad.write_bytes(b"not a checkpoint at all")
    fresh = tmp_path / "fresh"
    capsys.readouterr()
    assert train(fresh, cifar_small, "--resume", str(bad), "--steps", "1") == 2
    assert f"--resume '{bad}': {message}" in one_line(capsys)
    assert not fresh.exists()
    assert main(["eval", "--ckpt", str(bad)]) == 2
    assert f"--ckpt '{bad}': {message}" in one_line(capsys)
    assert main(["export", "--ckpt", str(bad)]) == 2
    assert f"--ckpt '{bad}': {message}" in one_line(capsys)


def test_overwrite_removes_the_old_checkpoints_only_once_its_own_is_written(held, cifar_small, monkeypatch):
    old = checkpoint.complete(held)
    seen_at_first_write = []
    real = checkpoint.save_atomic

    def watched(obj, path):
        if not seen_at_first_write:
            seen_at_first_write.append([p for p in old if p.exists()])
        return real(obj, path)

    monkeypatch.setattr(checkpoint, "save_atomic", watched)
    assert train(held, cifar_small, "--model", "mnv2", "--steps", "1", "train.overwrite=true") == 0
    assert seen_at_first_write == [old]  # both still there while the new run wrote its first
    kept = checkpoint.complete(held)
    assert [p.name for p in kept] == ["ckpt-e0000-s00000001.pt"]
    state = checkpoint.load(kept[0], torch.device("cpu"))
    assert state["config"]["model"]["name"] == "mnv2"
    assert '"name": "mnv2"' in (held / "config.json").read_text()


def test_overwrite_and_resume_together_are_refused(held, cifar_small, capsys):
    before = digests(held)
    capsys.readouterr()
    assert train(held, cifar_small, "--model", "r18", "--resume", "auto", "train.overwrite=true") == 2
    assert "train.overwrite=true starts afresh; it cannot also continue a run" in one_line(capsys)
    assert digests(held) == before
