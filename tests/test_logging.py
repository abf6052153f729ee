"""What a run shows: one plain line per log step on stdout when it is not a terminal (a batch job's
file), a bar that keeps the step and the ETA whole in an 80-column terminal, the start header and
the end footer, partial epochs marked in metrics.jsonl, curves that never end a run."""

import importlib.util
import io
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from sslight.train.log import Eta, RunReport, draw_curves, fitted, read
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
# 64 images, 8 per batch: 8 steps per epoch; the run stops after 2 of them
RUN = [*TINY, "views.n_local=2", "data.limit=64", "--batch", "8", "--epochs", "3", "--steps", "2", "eval.every=0"]
STEP = re.compile(r"step \d+/\d+")
ETA = re.compile(r"ETA (\d+:\d\d:\d\d|-:--:--)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "sslight", "train", "--data", str(data), "--out", str(out), *RUN]


def environment(**extra) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


def test_a_line_shows_every_part_and_a_narrow_one_drops_the_others_first():
    parts = dict(epoch="epoch 1/100", step="step 123/39000", loss="loss 6.3083", lr="lr 1.20e-03",
                 ips="530 img/s", wait="data-wait 3%", rank="rank 67%", eta="ETA 12:01:02")
    assert fitted(parts, None) == ("epoch 1/100  step 123/39000  loss 6.3083  lr 1.20e-03  530 img/s  "
                                   "data-wait 3%  rank 67%  ETA 12:01:02")
    assert fitted(parts, 64) == "epoch 1/100  step 123/39000  loss 6.3083  rank 67%  ETA 12:01:02"
    assert fitted(parts, 10) == "epoch 1/100  step 123/39000  ETA 12:01:02"  # never cut, whatever the width


def test_the_eta_leaves_out_the_start_up_window_once_there_is_another():
    eta = Eta()
    assert eta.left(100) == "ETA -:--:--"
    eta.add(10, 100.0)  # compilation
    assert eta.left(100) == "ETA 0:16:40"
    eta.add(10, 1.0)
    eta.add(10, 3.0)
    assert eta.left(3600) == "ETA 0:12:00"  # 0.2 s per step


def test_not_a_terminal_gets_one_plain_line_per_log_step_and_a_terminal_a_fitted_bar():
    file = io.StringIO()
    plain = RunReport(Console(file=file, width=80), Console(file=io.StringIO()), 3, 8, 24)
    with plain.epoch(0, 0, 0):
        for step in range(1, 5):
            plain.stepped(step)
            if step % 2 == 0:
                plain.logged(step, 2, 1.0, dict(loss="loss 1.5000", rank="rank 50%"))
    assert file.getvalue().splitlines() == ["epoch 1/3  step 2/24  loss 1.5000  rank 50%  ETA 0:00:11",
                                            "epoch 1/3  step 4/24  loss 1.5000  rank 50%  ETA 0:00:10"]
    file = io.StringIO()
    shown = dict(loss="loss 1.5000", lr="lr 1.20e-03", ips="530 img/s", wait="data-wait 3%", rank="rank 50%")
    bar = RunReport(Console(file=file, width=80, force_terminal=True), Console(file=io.StringIO()), 100, 390, 39000)
    with bar.epoch(0, 0, 0):
        bar.stepped(1)
        bar.logged(1, 1, 1.0, shown)
    last = ANSI.sub("", file.getvalue()).replace("\r", "\n").splitlines()[-1]
    assert len(last) <= 80 and "step 1/39000" in last and "ETA 10:49:59" in last and "loss 1.5000" in last


def test_curves_that_cannot_be_drawn_are_one_warning_not_the_end(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(dict(kind="train", step=1, epoch=0, loss=1.0, lr=0.1,
                                                            images_per_s=5.0, data_wait_pct=1.0)) + "\n")
    (tmp_path / "curves.png").mkdir()  # where the picture should go, a folder: the write fails
    notes = io.StringIO()
    draw_curves(tmp_path, RunReport(Console(file=io.StringIO()), Console(file=notes, width=500), 1, 1, 1))
    said = notes.getvalue().splitlines()
    assert len(said) == 1 and said[0].startswith(f"warning: {tmp_path / 'curves.png'} not drawn (")


def test_a_run_redirected_to_a_file_logs_each_window_at_once_and_ends_with_the_footer(cifar_small, tmp_path):
    out, log = tmp_path / "run", tmp_path / "stdout.txt"
    with open(log, "w") as stdout:
        proc = subprocess.Popen(command(cifar_small, out), cwd=ROOT, env=environment(), stdout=stdout,
                                stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 240
    while "step 1/2 " not in log.read_text():
        assert proc.poll() is None, f"ended before its first log line reached the file: {log.read_text()}"
        assert time.monotonic() < end, "no log line within the first log window"
        time.sleep(0.05)
    assert "done in" not in log.read_text()  # the line came at its log step, not with the end
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text  # no redrawn frames, no colour codes in a file
    lines = text.splitlines()
    assert lines[0].startswith("sslight: mnv2 dino, recipe sslight, schedule full: 3 epochs x 8 steps/epoch, "
                               "stopping at step 2, batch 8")
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    assert f"  out {out}: " in text and (f"TensorBoard: {out / 'tb'}" if tensorboard else
                                        "TensorBoard off (pip install 'sslight[tensorboard]')") in text
    if tensorboard:  # the extra turns it on: the logged scalars are in OUT/tb
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(out / "tb")).Reload()
        assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    logged = [line for line in lines if line.startswith("epoch 1/1  step ")]
    assert [STEP.search(line).group() for line in logged] == ["step 1/2", "step 2/2"]
    assert all(ETA.search(line) and " loss " in line and " img/s " in line for line in logged)
    checkpoint = next(out.glob("ckpt-*.pt"))
    assert lines[-2].startswith("done in ") and lines[-2].endswith(f": last checkpoint {checkpoint}")
    assert lines[-1] == (f"next: sslight eval --ckpt {out}  |  sslight export --ckpt {out}  |  "
                         f"sslight plot {out}")
    epoch = [r for r in read(out / "metrics.jsonl") if r["kind"] == "epoch"]
    assert len(epoch) == 1 and epoch[0]["partial"] is True and epoch[0]["batches"] == 2  # 2 of 8 batches
    assert (out / "curves.png").stat().st_size > 0


def test_an_80_column_terminal_shows_the_step_and_the_eta_whole(cifar_small, tmp_path):
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(command(cifar_small, tmp_path / "run"), cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=terminal, stderr=subprocess.PIPE, env=environment(COLUMNS="80", TERM="xterm"))
    os.close(terminal)
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    frames = ANSI.sub("", screen.decode()).replace("\r", "\n").splitlines()
    bars = [f for f in frames if f.startswith("epoch 1/1 ")]
    assert bars and all(len(f) <= 80 for f in bars), [f for f in frames if len(f) > 80]
    assert all(STEP.search(f) and ETA.search(f) for f in bars)
    assert any("step 2/2" in f and "loss " in f and not ETA.search(f).group().endswith("-:--:--") for f in bars)


def test_the_dataset_download_says_one_line_and_draws_no_frames(tmp_path, capsys):
    from loaders.datasets import fetch

    source = tmp_path / "source.tar.gz"
    source.write_bytes(os.urandom(3 << 20))
    (tmp_path / "raw").mkdir()
    fetch(source.as_uri(), tmp_path / "raw" / "archive.tar.gz")
    assert (tmp_path / "raw" / "archive.tar.gz").read_bytes() == source.read_bytes()
    assert os.listdir(tmp_path / "raw") == ["archive.tar.gz"]  # no temporary file left
    err = capsys.readouterr().err
    assert err == f"downloading {source.as_uri()} into {tmp_path / 'raw'} (once)\n"


def test_a_long_dataset_scan_says_one_line_off_a_terminal(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from loaders import scan

    files = []
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "0.png").write_bytes(b"")
    monkeypatch.setattr(scan, "ANNOUNCED", 4)  # the line's threshold, lowered to this folder's size
    assert scan.scan(files, tmp_path / "cache") == {files[0]: "zero bytes"}
    said = capsys.readouterr().err
    cache = tmp_path / "cache" / "scans"
    assert said == f"checking 4 images for unreadable files (once; the result is cached in {cache})\n"
    assert scan.scan(files, tmp_path / "cache") == {files[0]: "zero bytes"}
    assert capsys.readouterr().err == ""  # cached: checked once


def test_a_stop_during_the_epochs_knn_keeps_the_epochs_record(cifar_small, tmp_path, monkeypatch):
    """The epoch (here cut by the step limit) is trained and saved before its kNN: a stop there
    loses the kNN only."""
    import sslight
    from sslight.train import faults, loop

    def stopped(*args):
        raise faults.Interrupted(2, "stopped by SIGINT during the kNN evaluation")

    monkeypatch.setattr(loop, "knn_evaluation", stopped)
    out = tmp_path / "run"
    with pytest.raises(faults.Interrupted):
        sslight.pretrain(data=str(cifar_small), out=str(out), steps=1, batch=8, model="mnv2",
                         overrides=[*TINY, "views.n_local=2"])
    (record,) = [r for r in read(out / "metrics.jsonl") if r["kind"] == "epoch"]
    assert record["epoch"] == 0 and record["steps"] == 1 and "knn_top1" not in record
    assert list(out.glob("ckpt-e0000-s00000001.pt"))
