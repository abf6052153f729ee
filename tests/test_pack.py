"""``sslight pack``: the shards, their DALI indexes and index.json say the same thing as the source;
a pack resumes to the bytes of an uninterrupted one, refuses another dataset, and says what it left out."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from loaders.datasets import DataError, discover
from loaders.pack import INDEX, STATE, Bar, member_header, pack, parse_size, report, shuffled, tarfile_header
from sslight.cli import main
from tests.test_hostile_data import BAD, salted  # noqa: F401 (the hostile folder, a fixture)

ROOT = Path(__file__).resolve().parent.parent
WDS2IDX = importlib.util.find_spec("wds2idx")  # DALI's own indexer, installed with DALI


def image(path: Path, w: int, h: int, seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(pixels).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """train/ (2 classes, 15 images of several sizes, a PNG and a greyscale JPEG among them) and
    val/ (4 images)."""
    root = tmp_path_factory.mktemp("pack-src")
    for i in range(8):
        image(root / "train" / "cat" / f"c{i}.jpg", 24 + 4 * i, 40 - 2 * i, i)
    for i in range(5):
        image(root / "train" / "dog" / f"d{i}.jpg", 30, 20 + i, 10 + i)
    image(root / "train" / "dog" / "p.png", 33, 17, 20)
    image(root / "train" / "dog" / "q.jpg", 26, 26, 21, mode="L")
    for i, cls in enumerate(["cat", "dog", "cat", "dog"]):
        image(root / "val" / cls / f"v{i}.jpg", 28, 28, 30 + i)
    return root


def members(tar_path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar_path) as tar:
        return tar.getmembers()


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def check_pack(dst: Path, src: Path) -> dict:
    """index.json against the tars, the .idx files and the source: every member in order, offsets and
    sizes at the exact image bytes, labels and sample indexes right."""
    index = json.loads((dst / INDEX).read_text())
    assert index["format"] == "sslight-shards" and index["version"] == 1 and index["complete"] is True
    dataset = discover(src)
    assert index["classes"] == dataset.classes
    # in the packer's fixed random order of the listed files
    splits = [("train", shuffled(dataset.train))] + ([(s, shuffled(dataset.test)) for s in index["splits"]
                                                      if s != "train"])
    for name, split in splits:
        kept = [(f, label) for f, label in zip(split.files, split.labels)
                if os.path.relpath(f, src) not in index["excluded"]]
        entry = index["splits"][name]
        assert entry["samples"] == len(kept) == sum(s["samples"] for s in entry["shards"])
        i = 0
        for shard in entry["shards"]:
            tar_path = dst / shard["tar"]
            assert tar_path.stat().st_size == shard["bytes"]
            got = members(tar_path)
            assert len(got) == 3 * shard["samples"]
            idx_lines = (dst / shard["idx"]).read_text().splitlines()
            assert idx_lines[0] == f"v1.2 {shard['samples']}"
            for j in range(shard["samples"]):
                key = f"{i:08d}"
                img, cls, number = got[3 * j: 3 * j + 3]
                assert img.name in (f"{key}.jpg", f"{key}.png") and cls.name == f"{key}.cls" and \
                    number.name == f"{key}.index"
                assert (img.offset_data, img.size) == (shard["offsets"][j], shard["sizes"][j])
                data = read_at(tar_path, shard["offsets"][j], shard["sizes"][j])
                source, label = kept[i]
                raw = Path(source).read_bytes()
                if img.name.endswith(".jpg") and index["options"]["reencode"] is None:
                    assert data == raw  # JPEG bytes as they are
                else:
                    with Image.open(io.BytesIO(data)) as im:
                        assert im.mode == "RGB" and im.format == ("PNG" if img.name.endswith(".png") else "JPEG")
                        with Image.open(source) as original:
                            assert im.size == original.size
                assert shard["labels"][j] == label
                assert read_at(tar_path, cls.offset_data, cls.size) == str(label).encode()
                assert int.from_bytes(read_at(tar_path, number.offset_data, 8), "little", signed=True) == i
                assert idx_lines[1 + j].split() == [
                    img.name.split(".")[1], str(img.offset_data), str(img.size), img.name,
                    "cls", str(cls.offset_data), str(cls.size), cls.name,
                    "index", str(number.offset_data), "8", number.name]
                i += 1
        sizes = []
        for source, _ in kept:
            with Image.open(source) as im:
                sizes.append(im.size)
        widths, heights = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
        assert entry["image_size"]["width"][0::2] == [widths[0], widths[-1]]
        assert entry["image_size"]["height"][0::2] == [heights[0], heights[-1]]
        assert entry["image_size"]["width"][1] in widths
    return index


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_pack_is_what_its_index_says(folder, tmp_path):
    dst = tmp_path / "shards"
    packed = pack(str(folder), str(dst), shard_bytes=8 << 10)
    index = check_pack(dst, folder)
    assert set(index["splits"]) == {"train", "val"} and index["excluded"] == {}
    assert len(index["splits"]["train"]["shards"]) > 2  # the small shard size made several
    assert index["source"]["path"] == str(folder) and index["options"] == {"shard_bytes": 8 << 10, "reencode": None}
    names = [m.name for s in index["splits"]["train"]["shards"] for m in members(dst / s["tar"])]
    assert sum(n.endswith(".png") for n in names) == 1  # p.png as PNG; the greyscale JPEG kept as it is
    assert not (dst / STATE).exists() and packed.images == 19
    assert sorted(p.name for p in dst.iterdir()) == ["index.json", "train", "val"]
    lines = report(packed)
    assert "19 images" in lines[0] and any(line.startswith("  train: 15 images") for line in lines)


def test_the_idx_files_are_what_dalis_wds2idx_writes(folder, tmp_path):
    if WDS2IDX is None or not shutil.which("tar"):
        pytest.skip("DALI's wds2idx or GNU tar not installed")
    dst = tmp_path / "shards"
    pack(str(folder), str(dst), shard_bytes=8 << 10)
    for tar_path in sorted((dst / "train").glob("*.tar")):
        subprocess.run([sys.executable, WDS2IDX.origin, str(tar_path), str(tmp_path / "theirs.idx")], check=True,
                       capture_output=True)
        assert (tmp_path / "theirs.idx").read_bytes() == tar_path.with_suffix(".idx").read_bytes()


def test_dali_reads_the_shards_with_their_indexes(folder, tmp_path):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, types

    dst = tmp_path / "shards"
    pack(str(folder), str(dst), shard_bytes=8 << 10)
    index = json.loads((dst / INDEX).read_text())
    shards = index["splits"]["train"]["shards"]
    total = index["splits"]["train"]["samples"]

    @dali.pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipeline():
        data, cls, number = fn.readers.webdataset(paths=[str(dst / s["tar"]) for s in shards],
                                     index_paths=[str(dst / s["idx"]) for s in shards], ext=["jpg;png", "cls", "index"],
                                     dtypes=[types.UINT8, types.UINT8, types.INT64], missing_component_behavior="error",
                                     random_shuffle=False, name="reader")
        return data, cls, number

    pipe = pipeline()
    pipe.build()
    assert pipe.epoch_size("reader") == total
    seen, labels, images = [], [], []
    while len(seen) < total:
        data, cls, number = pipe.run()
        for k in range(len(number)):
            assert np.array(number[k]).dtype == np.int64
            seen.append(int(np.array(number[k])[0]))
            labels.append(int(bytes(np.array(cls[k]))))
            images.append(bytes(np.array(data[k])))
    assert seen[:total] == list(range(total))
    assert labels[:total] == [label for s in shards for label in s["labels"]]
    assert images[:total] == [read_at(dst / s["tar"], o, n) for s in shards for o, n in zip(s["offsets"], s["sizes"])]


def test_a_hostile_folder_packs_with_its_bad_files_listed(salted, tmp_path):  # noqa: F811
    dst = tmp_path / "shards"
    packed = pack(str(salted), str(dst), shard_bytes=64 << 10)
    index = check_pack(dst, salted)
    assert {Path(p).name for p in index["excluded"]} == BAD
    assert all(p.startswith("train/") for p in index["excluded"])
    said = "\n".join(report(packed))
    assert f"excluded {len(BAD)} unreadable files" in said and all(name in said for name in BAD)
    big = max(s["bytes"] for s in index["splits"]["train"]["shards"])
    assert big > 64 << 10  # the 6000 x 6000 image: a shard of its own, over the size asked
    assert index["splits"]["train"]["image_size"]["width"][2] == 6000


def test_every_shard_keeps_to_the_size_asked(folder, tmp_path):
    limit = 6 << 10
    pack(str(folder), str(tmp_path / "shards"), shard_bytes=limit)
    index = json.loads((tmp_path / "shards" / INDEX).read_text())
    shards = [s for split in index["splits"].values() for s in split["shards"]]
    assert len(shards) >= 6
    assert all(s["bytes"] <= limit or s["samples"] == 1 for s in shards)
    # each shard is full: the next sample did not fit
    train = index["splits"]["train"]["shards"]
    assert all(a["bytes"] + 3 * 512 + b["sizes"][0] > limit - 1024 for a, b in zip(train, train[1:]))


def stop_at(split: str, number: int):
    def hook(name, n):
        if (name, n) == (split, number):
            raise KeyboardInterrupt

    return hook


@pytest.mark.parametrize("split, number", [("train", 1), ("val", 0)])
def test_an_interrupted_pack_resumes_to_the_bytes_of_an_uninterrupted_one(folder, tmp_path, split, number):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    pack(str(folder), str(whole), shard_bytes=8 << 10)
    with pytest.raises(KeyboardInterrupt):
        pack(str(folder), str(cut), shard_bytes=8 << 10, after_shard=stop_at(split, number))
    assert not (cut / INDEX).exists() and (cut / STATE).is_dir()
    assert not list(cut.rglob(".*.tmp-*"))
    seen = []
    packed = pack(str(folder), str(cut), shard_bytes=8 << 10, after_shard=lambda s, n: seen.append((s, n)))
    assert seen[0] == (split, number + 1)  # the complete shards kept, the rest written
    assert packed.resumed > 0 and packed.images < 19
    assert tree_bytes(cut) == tree_bytes(whole)


def test_a_killed_pack_resumes_to_the_same_bytes(folder, tmp_path):
    """SIGKILL in the middle of a shard (its temporary file left behind), and a shard renamed into
    place whose record was never written: both are written again."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    pack(str(folder), str(whole), shard_bytes=8 << 10)
    script = (f"import os, signal\nfrom loaders import pack as p\n"
              f"add = p.ShardWriter.add\n"
              f"def killing(self, index, item):\n"
              f"    add(self, index, item)\n"
              f"    if index == 7: self.file.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
              f"p.ShardWriter.add = killing\n"
              f"p.pack({str(folder)!r}, {str(cut)!r}, shard_bytes=8 << 10)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()
    assert list(cut.rglob(".*.tmp-*")) and not (cut / INDEX).exists()
    records = sorted((cut / STATE).glob("train-*.json"))
    assert records
    records[-1].unlink()  # as if killed between the shard's rename and its record
    pack(str(folder), str(cut), shard_bytes=8 << 10)
    assert tree_bytes(cut) == tree_bytes(whole)


def test_sslight_pack_runs_without_torch(folder, tmp_path):
    """Packing reads and writes bytes: importing torch and torchvision (seconds) would be its start-up."""
    script = (f"import sys\nfrom sslight.cli import main\n"
              f"code = main(['pack', {str(folder)!r}, {str(tmp_path / 'shards')!r}])\n"
              f"print(code, sorted(m for m in ('torch', 'torchvision', 'numba') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout + done.stderr


def test_ctrl_c_is_one_line_and_the_same_command_goes_on(folder, tmp_path, capsys, monkeypatch):
    import loaders.pack as packer

    read_item = packer.read_item

    def interrupted(position, path, label, quality):
        if path.endswith("d2.jpg"):
            raise KeyboardInterrupt  # as Ctrl-C reaches the writer waiting on this file
        return read_item(position, path, label, quality)

    monkeypatch.setattr(packer, "read_item", interrupted)
    dst = tmp_path / "shards"
    code, out, err = cli(capsys, folder, dst, "--shard-size", "8KB")
    assert code == 130 and len(err.strip().splitlines()) == 1
    assert f"pack stopped; its complete shards are kept in {dst}" in err
    monkeypatch.setattr(packer, "read_item", read_item)
    code, out, err = cli(capsys, folder, dst, "--shard-size", "8KB")
    assert code == 0 and "kept from the interrupted pack" in out
    check_pack(dst, folder)


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["pack", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_second_pack_says_already_packed_or_refuses_another_dataset(folder, tmp_path, capsys):
    dst = tmp_path / "shards"
    code, out, _ = cli(capsys, folder, dst, "--shard-size", "8KB")
    assert code == 0 and f"packed {folder} into {dst}: 19 images" in out
    before = tree_bytes(dst)
    code, out, _ = cli(capsys, folder, dst, "--shard-size", "8KB")
    assert code == 0 and "already packed" in out.splitlines()[0]
    other = tmp_path / "other"
    shutil.copytree(folder / "train", other)
    for argv in ([other, dst, "--shard-size", "8KB"], [folder, dst, "--shard-size", "16KB"],
                 [folder, dst, "--shard-size", "8KB", "--reencode", "80"]):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert str(folder) in err and str(argv[0]) in err and "never mixes two packs" in err
    assert tree_bytes(dst) == before


def test_an_unfinished_pack_refuses_another_dataset(folder, tmp_path, capsys):
    dst = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        pack(str(folder), str(dst), shard_bytes=8 << 10, after_shard=stop_at("train", 0))
    code, _, err = cli(capsys, folder / "train", dst, "--shard-size", "8KB")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"holds a pack of {folder} " in err and f"this pack is of {folder / 'train'} " in err


def test_a_changed_source_is_refused(folder, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(folder, src)
    dst = tmp_path / "shards"
    pack(str(src), str(dst), shard_bytes=8 << 10)
    image(src / "train" / "cat" / "new.jpg", 20, 20, 99)
    code, _, err = cli(capsys, src, dst, "--shard-size", "8KB")
    assert code == 2 and "whose files have changed since" in err


def test_reencode_makes_every_image_a_jpeg_of_that_quality(folder, tmp_path):
    dst = tmp_path / "shards"
    pack(str(folder), str(dst), shard_bytes=1 << 20, reencode=20)
    index = check_pack(dst, folder)
    assert index["options"]["reencode"] == 20
    names = [m.name for s in index["splits"]["train"]["shards"] for m in members(dst / s["tar"])]
    assert all(not n.endswith(".png") for n in names) and sum(n.endswith(".jpg") for n in names) == 15
    plain = tmp_path / "plain"
    pack(str(folder), str(plain), shard_bytes=1 << 20)
    size = lambda d: sum(sum(s["sizes"]) for s in json.loads((d / INDEX).read_text())["splits"]["train"]["shards"])
    assert size(dst) < size(plain)


def test_a_flat_folder_packs_unlabelled(tmp_path):
    for i in range(3):
        image(tmp_path / "flat" / f"{i}.jpg", 20, 20, i)
    pack(str(tmp_path / "flat"), str(tmp_path / "shards"))
    index = check_pack(tmp_path / "shards", tmp_path / "flat")
    assert index["classes"] == [] and list(index["splits"]) == ["train"]
    assert index["splits"]["train"]["shards"][0]["labels"] == [-1, -1, -1]


@pytest.mark.parametrize("argv, said", [
    (["{tmp}/nowhere", "{tmp}/shards"], "SRC={tmp}/nowhere: no such folder; allowed:"),
    (["{src}", "{src}/train/shards"], "inside SRC="),
    (["{src}", "{tmp}/file"], "a file, not a folder"),
    (["{src}", "{tmp}/full"], "not empty and holds no pack"),
    (["{src}", "{tmp}/shards", "--shard-size", "12XB"], "--shard-size '12XB': not a size; allowed:"),
    (["{src}", "{tmp}/shards", "--shard-size", "10"], "under the smallest shard"),
    (["{src}", "{tmp}/shards", "--reencode", "101"], "--reencode '101': allowed: a JPEG quality from 1 to 100"),
    (["{src}", "{tmp}/shards", "--workers", "x"], "--workers 'x'"),
    (["{src}", "{tmp}/shards", "extra"], "pack takes SRC DST"),
])
def test_bad_input_is_one_line(folder, tmp_path, capsys, argv, said):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    argv = [a.format(tmp=tmp_path, src=folder) for a in argv]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("sslight: error: ")
    assert said.format(tmp=tmp_path, src=folder) in err
    assert not (tmp_path / "shards").exists()


def test_through_make_the_errors_name_the_make_variables(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSLIGHT_VIA_MAKE", "1")
    code, _, err = cli(capsys, tmp_path / "nowhere", tmp_path / "shards")
    assert code == 2 and f"DATA={tmp_path}/nowhere: no such folder" in err
    code, _, err = cli(capsys, folder, tmp_path / "shards", "--shard-size", "12XB")
    assert code == 2 and "SHARD_SIZE='12XB'" in err or "SHARD_SIZE=" in err
    dst = tmp_path / "shards"
    pack(str(folder), str(dst), shard_bytes=8 << 10)
    code, _, err = cli(capsys, folder / "train", dst)
    assert code == 2 and f"SHARDS={dst} holds a pack of" in err


def test_make_pack_passes_its_variables():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL")}
    run = subprocess.run(["make", "-n", "-s", "pack", "DATA=/data/imagenet", "SHARDS=/data/shards",
                          "SHARD_SIZE=1GB", "REENCODE=90"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr
    assert 'sslight pack "/data/imagenet" "/data/shards" --shard-size "1GB" --reencode "90"' in run.stdout
    run = subprocess.run(["make", "-n", "-s", "pack", "DATA=/x"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode != 0 and "SHARDS is empty" in run.stderr


def test_off_a_terminal_the_progress_is_a_line_per_tenth(folder, tmp_path):
    said = io.StringIO()
    pack(str(folder), str(tmp_path / "shards"), shard_bytes=8 << 10,
         progress=Bar(Console(file=said, force_terminal=False, width=200)))
    lines = said.getvalue().splitlines()
    assert "\r" not in said.getvalue() and 5 <= len(lines) <= 10
    assert all(line.startswith("packed ") and "images/s, ETA " in line for line in lines)


@pytest.mark.parametrize("name, size", [("00000000.jpg", 924), ("12345678.index", 8), ("x" * 100, 0),
                                        ("00000001.png", 8 ** 11 - 1)])
def test_the_fast_tar_header_is_tarfiles(name, size):
    assert member_header(name, size) == tarfile_header(name, size)


def test_parse_size():
    assert parse_size("256MB") == 256 << 20 == parse_size("256 MiB") == parse_size("256m")
    assert parse_size("1.5GB") == 3 << 29 and parse_size("8192") == 8192
    with pytest.raises(DataError):
        parse_size("MB")
