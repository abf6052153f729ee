"""A dataset salted with bad and odd files trains one epoch on every backend and reports
what it excluded."""

import numpy as np
import pytest
from PIL import Image

from loaders.scan import problem
from sslight.cli import main
from tests.conftest import TINY
from tests.test_backends import optional


@pytest.fixture(scope="module")
def salted(tmp_path_factory):
    root = tmp_path_factory.mktemp("salted")
    rng = np.random.default_rng(0)
    good = root / "train" / "a"
    good.mkdir(parents=True)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(good / f"ok{i}.jpg")
    odd = root / "train" / "b"
    odd.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8)).save(odd / "grey.jpg")
    Image.fromarray(rng.integers(0, 256, (30, 50, 4), dtype=np.uint8)).save(odd / "rgba.png")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(odd / "tiny.jpg")
    Image.fromarray(np.full((6000, 6000, 3), 90, np.uint8)).save(odd / "huge.jpg", quality=50)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(odd / "png_named.jpg", format="PNG")
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "text.jpg").write_text("not an image at all\n")
    full = (good / "ok0.jpg").read_bytes()
    (odd / "truncated.jpg").write_bytes(full[: len(full) // 2])
    return root


BAD = {"empty.jpg", "text.jpg", "truncated.jpg"}


def test_problem_finds_exactly_the_bad_files(salted):
    found = {p.name for p in (salted / "train").rglob("*") if p.is_file() and problem(str(p))}
    assert found == BAD


@pytest.mark.parametrize("loader", ["pil", "nvjpeg", optional("dali"), optional("ffcv"), "synthetic"])
def test_salted_dataset_trains_one_epoch(salted, tmp_path, loader, monkeypatch, capsys):
    monkeypatch.setenv("SSLIGHT_DATA", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = main(["train", "--data", str(salted), "--loader", loader, "--epochs", "1", "--batch", "4",
                 "--out", str(out), "views.global_size=32", *TINY])
    assert code == 0
    listed = {line.split("\t")[0].rsplit("/", 1)[-1] for line in (out / "excluded_files.txt").read_text().splitlines()}
    assert listed == BAD
    assert "excluded 3 unreadable files" in capsys.readouterr().err.replace("\n", " ")
