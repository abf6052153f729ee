"""A dataset salted with bad and odd files trains one epoch on every backend and reports
what it excluded."""

import numpy as np
import pytest
from PIL import Image

from loaders import ffcv
from loaders.batch import ViewGroup
from loaders.scan import problem
from sslight.cli import main
from sslight.train.log import read
from tests.conftest import TINY
from tests.test_backends import optional
from tests.test_screening import GREY16, RGB16, deadline, png16, sos_offset, with_exif_thumbnail


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
    # the screening's four defects of issue 28: a 16-bit PNG (crashed nvjpeg's crop), a 3000x4 strip
    # (hung FFCV's .beton writer), a JPEG with bytes after its end (was excluded as truncated) and a
    # truncated JPEG whose EXIF thumbnail ends near its end (was kept)
    Image.fromarray(GREY16).save(odd / "grey16.png")
    png16(odd / "rgb16.png", RGB16)
    Image.fromarray(np.full((4, 3000, 3), 90, np.uint8)).save(odd / "strip.jpg")
    (odd / "trailing.jpg").write_bytes(full + b"\x00" * 300)
    thumb = with_exif_thumbnail(full)
    (odd / "thumbnail_truncated.jpg").write_bytes(thumb[: sos_offset(thumb) + 24])
    return root


BAD = {"empty.jpg", "text.jpg", "truncated.jpg", "strip.jpg", "thumbnail_truncated.jpg"}


def test_problem_finds_exactly_the_bad_files(salted):
    found = {p.name for p in (salted / "train").rglob("*") if p.is_file() and problem(str(p))}
    assert found == BAD


@pytest.mark.parametrize("loader", ["pil", "nvjpeg", optional("dali"), optional("ffcv", pytest.mark.slow), "synthetic"])
def test_salted_dataset_trains_one_epoch(salted, tmp_path, loader, monkeypatch, capsys):
    monkeypatch.setenv("SSLIGHT_DATA", str(tmp_path / "cache"))
    out = tmp_path / "run"
    with deadline(300):  # no backend hangs on one image
        code = main(["train", "--data", str(salted), "--loader", loader, "--epochs", "1", "--batch", "4",
                     "--out", str(out), "views.global_size=32", *TINY])
    assert code == 0
    listed = {line.split("\t")[0].rsplit("/", 1)[-1] for line in (out / "excluded_files.txt").read_text().splitlines()}
    assert listed == BAD
    assert f"excluded {len(BAD)} unreadable files" in capsys.readouterr().err.replace("\n", " ")




@pytest.mark.slow  # a second FFCV run (its numba compile, its .beton) beside the salted one: about 50 s
@pytest.mark.skipif(not ffcv.available(), reason="ffcv not installed")
def test_ffcv_with_a_huge_image_trains_then_evaluates_with_workers(salted, tmp_path, monkeypatch):
    """The 6000x6000 image is stored at the recipe's largest useful side, so FFCV's buffers stay
    small; the run stops mid-epoch (its loader still alive) and its kNN then starts workers."""
    import glob

    from ffcv.reader import Reader

    from loaders.ffcv import max_side

    monkeypatch.setenv("SSLIGHT_DATA", str(tmp_path / "cache"))
    labelled = tmp_path / "labelled"  # the salted images as train and test split, for the kNN
    labelled.mkdir()
    for split in ("train", "test"):
        (labelled / split).symlink_to(salted / "train")
    out = tmp_path / "run"
    code = main(["train", "--data", str(labelled), "--loader", "ffcv", "--steps", "1", "--batch", "4",
                 "--out", str(out), *TINY, "data.workers=2"])  # default views: 224 px globals, 128 px locals
    assert code == 0
    assert "knn_top1" in read(out / "metrics.jsonl")[-1]
    (beton,) = glob.glob(str(tmp_path / "cache" / "ffcv" / "*.beton"))
    stored = Reader(beton).metadata["f0"]
    groups = [ViewGroup(2, 224, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 128, (0.05, 0.3), (3 / 4, 4 / 3))]
    assert max(stored["width"].max(), stored["height"].max()) == max_side(groups) == 661


@pytest.mark.slow  # FFCV's numba compile of its own: about 25 s alone
@pytest.mark.skipif(not ffcv.available(), reason="ffcv not installed")
def test_salted_folder_packs_then_trains_ffcv_from_its_shards(salted, tmp_path, monkeypatch):
    """The salted folder packed (its bad files left out, listed), then FFCV's .beton written from
    the shards' bytes, keyed on the pack, and read: views of the right shape and type, and each
    sample's label the split's."""
    import hashlib

    import torch

    from loaders.datasets import load_dataset
    from loaders.pack import pack
    from loaders.shards import ShardedSplit

    monkeypatch.setenv("SSLIGHT_DATA", str(tmp_path / "cache"))
    packed = pack(str(salted), str(tmp_path / "shards"), shard_bytes=64 << 10)  # a few shards
    assert {p.rsplit("/", 1)[-1] for p in packed.index["excluded"]} == BAD
    split = load_dataset(str(tmp_path / "shards")).train
    files = sum(1 for p in salted.rglob("*") if p.is_file())
    assert isinstance(split, ShardedSplit) and len(split.shards) > 1 and len(split) == files - len(BAD)
    groups = [ViewGroup(2, 32, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(2, 16, (0.05, 0.3), (3 / 4, 4 / 3))]
    with deadline(300):
        loader = ffcv.FfcvLoader(split, groups, batch_size=4, seed=0, device=torch.device("cpu"), workers=1)
        batches = list(loader.epoch(0))
    assert len(batches) == loader.batches_per_epoch() == len(split) // 4
    for batch in batches:
        assert [tuple(v.shape) for v in batch.views] == [(2, 4, 3, 32, 32), (2, 4, 3, 16, 16)]
        assert all(v.dtype == torch.uint8 for v in batch.views)
        assert batch.labels.tolist() == [split.labels[i] for i in batch.indices.tolist()]
    seen = torch.cat([b.indices for b in batches]).tolist()
    assert len(set(seen)) == len(seen) == 4 * len(batches)
    (beton,) = (tmp_path / "cache" / "ffcv").glob("*.beton")
    assert beton.name.startswith(hashlib.sha1(split.key.encode()).hexdigest())
