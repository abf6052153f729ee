"""Evaluation and export as a user meets them: CPU defaults, k against the bank, stopping an
evaluation, the exported file's mode and timm data config, the loading snippets of the docs."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_data_config

from loaders.datasets import load_dataset
from sslight.augment import IMAGENET_MEAN, IMAGENET_STD
from sslight.cli import main
from sslight.eval import knn
from sslight.eval.export import load_timm
from sslight.recipes import build_config
from sslight.train import faults
from tests.test_eval import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "evaluation-and-export.md"
# timm's plain MobileNetV2 stem on 32 px images: a few MFLOPs per image
CHEAP = ["model.name=mnv2", "model.small_stem=false", "views.global_size=32", "data.workers=0"]


def test_k_larger_than_the_bank_is_clipped_with_a_note(capsys):
    knn.note.cache_clear()
    torch.manual_seed(0)
    bank, bank_labels = torch.randn(5, 8), torch.tensor([0, 1, 0, 1, 1])
    queries, query_labels = torch.randn(7, 8), torch.randint(0, 2, (7,))
    accs = knn.knn_accuracies(bank, bank_labels, queries, query_labels, [1, 3, 10, 20], 0.07, 2)
    assert list(accs) == [1, 3, 5]  # 10 and 20 neighbours of 5 are all 5: reported once, as k=5
    assert accs[5] == knn.knn_accuracies(bank, bank_labels, queries, query_labels, [5], 0.07, 2)[5]
    err = capsys.readouterr().err
    assert err == "sslight: note: kNN k=10,20 is more than the 5 images of the bank; clipped to k=5\n"
    knn.knn_accuracies(bank, bank_labels, queries, query_labels, [1, 3, 10, 20], 0.07, 2)
    assert capsys.readouterr().err == ""  # said once, not at every evaluation of a run
    assert knn.knn_top1(bank, bank_labels, queries, query_labels, 20, 0.07, 2) == accs[5]  # training's eval.k
    assert "kNN k=20 is more than the 5 images" in capsys.readouterr().err


def test_eval_on_a_cpu_defaults_to_knn(cifar_small, tmp_path, capsys):
    knn.note.cache_clear()
    ckpt = tmp_path / "ckpt-e0001-s00000001.pt"
    make_checkpoint(ckpt, [*CHEAP, f"data.path={cifar_small}"])
    assert main(["eval", "--ckpt", str(tmp_path), "eval.bank_limit=50", "eval.query_limit=20"]) == 0
    result = json.loads((tmp_path / "eval-ckpt-e0001-s00000001.json").read_text())
    assert "linear" not in result and "semisup" not in result
    assert list(result["knn"]) == ["10", "20", "50"]  # KNN_KS 10, 20, 100, 200 over a 50-image bank
    out, err = capsys.readouterr()
    assert "on a CPU the default is --tasks knn; --tasks knn,linear,semisup adds" in err
    assert "kNN k=100,200 is more than the 50 images of the bank; clipped to k=50" in err
    assert "kNN k10 " in out and "linear" not in out


def group_processes(pgid: int) -> list[str]:
    """The command lines of the live processes of process group ``pgid``."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat_file.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[2]) == pgid:
            found.append(cmdline)
    return found


def test_ctrl_c_during_eval_is_one_line_and_exit_130(cifar_small, tmp_path):
    """Ctrl-C in a terminal signals the whole process group: the command and the forkserver of its
    loader workers, which is importing torch for seconds after it starts. The command stops with
    one line; nothing prints a traceback."""
    ckpt = tmp_path / "ckpt-e0001-s00000001.pt"
    make_checkpoint(ckpt, [*CHEAP, f"data.path={cifar_small}"])
    cmd = [sys.executable, "-m", "sslight", "eval", "--ckpt", str(ckpt), "data.workers=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    end = time.monotonic() + 120
    while not any("forkserver" in c for c in group_processes(proc.pid)):
        assert proc.poll() is None, f"evaluation ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)
    # the command ignores SIGINT for the milliseconds of the server's fork and exec; the server's
    # imports take seconds (where a Ctrl-C used to print their KeyboardInterrupt traceback)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert err.splitlines()[-1] == ("sslight: stopped by SIGINT during the evaluation; "
                                    "no result written (features extracted so far are cached)"), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and out == "", err
    assert not list(tmp_path.glob("eval-*.json"))


class SignalsOnFirstForward(torch.nn.Module):
    """A backbone that sends ``signum`` to its own process in its first forward pass, as a user's
    Ctrl-C would arrive in the middle of the kNN's feature extraction."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum, self.calls = signum, 0
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            os.kill(os.getpid(), self.signum)
        return self.conv(x).mean((2, 3))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_the_training_knn_stops_at_once(cifar_small, signum):
    """Training's own handler only asks the loop to stop after the next step; the kNN between
    epochs has nothing to save and stops the run at once, with the training stop's exception
    (the CLI prints it as one line and exits 130/143)."""
    cfg = build_config([*CHEAP, f"data.path={cifar_small}", "eval.bank_limit=40", "eval.query_limit=20"])
    backbone = SignalsOnFirstForward(signum)
    with faults.StopSignals(torch.device("cpu")) as signals:
        training_handler = signal.getsignal(signum)
        with pytest.raises(faults.Interrupted) as stopped:
            knn.knn_evaluation(backbone, load_dataset(str(cifar_small)), cfg, torch.device("cpu"))
        assert signal.getsignal(signum) == training_handler  # training's handler is back
    assert backbone.calls == 1 and signals.signum == 0
    assert stopped.value.exit_code == 128 + signum
    assert str(stopped.value) == (f"stopped by {signal.Signals(signum).name} during the kNN evaluation; "
                                  "its checkpoints are kept; continue with --resume auto")


@pytest.mark.parametrize("model, small_stem, size", [("r18", True, 32), ("r18", False, 32)])
def test_export_is_a_normal_file_that_tells_timm_its_input(tmp_path, model, small_stem, size):
    ckpt = tmp_path / "ckpt-e0001-s00000001.pt"
    backbone = make_checkpoint(ckpt, [f"model.name={model}", f"model.small_stem={small_stem}",
                                      f"views.global_size={size}"])
    path = tmp_path / "ckpt-e0001-s00000001.backbone.safetensors"
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(umask)
        try:
            assert main(["export", "--ckpt", str(ckpt)]) == 0
        finally:
            os.umask(old)
        assert [stat.S_IMODE(p.stat().st_mode) for p in (path, path.with_suffix(".json"))] == [mode, mode]
    spec = json.loads(path.with_suffix(".json").read_text())
    models = [load_timm(path)]
    if spec["call"].startswith("timm.create_model"):  # the line export prints, as printed
        models.append(eval(spec["call"], {"timm": timm}).eval())
    x = torch.randn(2, 3, size, size)
    for loaded in models:
        data = resolve_data_config(model=loaded)
        assert tuple(data["input_size"]) == (3, size, size)
        assert tuple(resolve_data_config(model=loaded, use_test_size=True)["input_size"]) == (3, size, size)
        assert tuple(data["mean"]) == IMAGENET_MEAN and tuple(data["std"]) == IMAGENET_STD
        assert data["interpolation"] == "bicubic" and loaded.pretrained_cfg["num_classes"] == 0
        with torch.no_grad():
            assert torch.equal(loaded(x), backbone(x))


def test_the_docs_loading_snippets_run_as_written(tmp_path, monkeypatch):
    """Each Python block of docs/evaluation-and-export.md, its file name replaced by an export's,
    gives the backbone's features: the plain timm call on a ResNet-18 with timm's stem (the short
    schedule's), the others also with the small-input stem."""
    from PIL import Image

    exports = {}
    for small_stem in (False, True):
        ckpt = tmp_path / f"stem-{small_stem}" / "ckpt-e0001-s00000001.pt"
        ckpt.parent.mkdir()
        backbone = make_checkpoint(ckpt, ["model.name=r18", f"model.small_stem={small_stem}", "views.global_size=32"],
                                   perturb_norms=True)
        assert main(["export", "--ckpt", str(ckpt)]) == 0
        exports[small_stem] = ckpt.with_suffix(".backbone.safetensors"), backbone
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (48, 40), (200, 30, 90)).save(image)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) == 3
    for block in blocks:
        (documented,) = set(re.findall(r'"(runs/[^"]+\.backbone\.safetensors)"', block))
        for small_stem in ((False,) if "timm.create_model" in block else (False, True)):
            path, backbone = exports[small_stem]
            scope: dict = {}
            exec(compile(block.replace(documented, str(path)), str(DOCS), "exec"), scope)
            assert tuple(scope["x"].shape) == (1, 3, 32, 32)
            with torch.no_grad():
                assert torch.allclose(scope["features"], backbone(scope["x"]), atol=1e-5), (block, small_stem)


def test_an_evaluation_stops_at_its_next_sgd_step_and_at_once_on_a_second_signal():
    from sslight.eval.sgd import fit
    from sslight.interrupt import Interrupted, stoppable

    head = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    taken = []
    # what was there before (a job started in the background by a shell ignores SIGINT from its start)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def batches():
        for step in range(100):
            taken.append(step)
            if step == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives as batch 1 is drawn: step 1 does not run
            yield torch.randn(8, 4), torch.randint(0, 2, (8,))

    with pytest.raises(Interrupted, match="^stopped by SIGTERM during the probe; nothing saved$") as stopped:
        with stoppable("the probe", "nothing saved"):
            fit(opt, [0.1] * 100, batches(), head)
    assert stopped.value.exit_code == 143 and taken == [0, 1]
    assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]

    with pytest.raises(Interrupted, match="SIGINT") as stopped:
        with stoppable("a long step", "nothing saved"):
            os.kill(os.getpid(), signal.SIGINT)  # asks for the stop at the next check point
            os.kill(os.getpid(), signal.SIGINT)  # insists: stops now, inside the step
            raise AssertionError("not reached")
    assert stopped.value.exit_code == 130 and signal.getsignal(signal.SIGINT) == before[signal.SIGINT]
