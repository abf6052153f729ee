"""The one screening every backend and the packer share (loaders/scan.py), and what it lets
through: every kept image decodes to the same 8-bit RGB pixels on every backend (pil, nvjpeg,
dali on the CPU, ffcv's .beton), no backend hangs on one image, a JPEG with bytes after its
end-of-image marker is kept, and train/ and test/ with different classes say which differ."""

import json
import signal
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loaders import dali, ffcv
from loaders.datasets import DataError, Split, discover
from loaders.images import open_rgb
from loaders.scan import files_key, problem, scan

# ---------------------------------------------------------------- hostile files, built in code

GREY16 = (np.arange(40 * 48).reshape(40, 48) * 27).astype(np.uint16)  # 0..51813: most values > 255
RGB16 = np.stack([GREY16, GREY16[::-1], 65535 - GREY16], -1)


def png16(path: Path, array: np.ndarray) -> None:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count) written chunk by chunk:
    PIL writes 16-bit greyscale only."""
    array = array if array.ndim == 3 else array[..., None]
    h, w, c = array.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def jpeg_bytes(width=64, height=48, seed=0, quality=90) -> bytes:
    import io

    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=quality)
    return out.getvalue()


def sos_offset(data: bytes) -> int:
    """Where a JPEG's first start-of-scan marker is (walking its header segments)."""
    at = 2
    while data[at + 1] != 0xDA:
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return at


def with_exif_thumbnail(data: bytes) -> bytes:
    """``data`` with an APP1 Exif segment holding a whole small JPEG (a thumbnail, with its own
    end-of-image marker) placed just before the main image's scan."""
    payload = b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + bytes(6) + jpeg_bytes(16, 12, seed=1, quality=50)
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    at = sos_offset(data)
    return data[:at] + app1 + data[at:]


def hostile_files(root: Path) -> dict[str, str | None]:
    """{file name: the start of the reason it is excluded, or None when it is kept}, written into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[:40, :48]
    rgb8 = np.stack([x * 5, y * 6, (x + y) * 3], -1).astype(np.uint8)  # smooth: JPEG keeps it within a level or two
    expect = {}
    Image.fromarray(GREY16).save(root / "grey16.png")  # PIL's mode I;16
    png16(root / "rgb16.png", RGB16)
    png16(root / "rgba16.png", np.concatenate([RGB16, GREY16[..., None]], -1))
    png16(root / "greyalpha16.png", np.stack([GREY16, 65535 - GREY16], -1))
    Image.fromarray(GREY16).save(root / "grey16.tif")
    Image.fromarray(rgb8).convert("LA").save(root / "la.png")
    Image.fromarray(rgb8).convert("P").save(root / "palette_trns.png", transparency=3)
    Image.fromarray(rgb8).convert("1").save(root / "bilevel.png")
    Image.fromarray(rgb8).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rgb8).save(root / "plain.jpg")
    expect.update(dict.fromkeys(["grey16.png", "rgb16.png", "rgba16.png", "greyalpha16.png", "grey16.tif", "la.png",
                                 "palette_trns.png", "bilevel.png", "cmyk.jpg", "plain.jpg"]))
    Image.fromarray(GREY16.astype(np.int32) * 3).save(root / "int32.tif")  # mode I: no defined white
    Image.fromarray(GREY16.astype(np.float32) / 65535).save(root / "float.tif")  # mode F
    expect.update({"int32.tif": "32-bit", "float.tif": "32-bit"})

    good = jpeg_bytes()
    (root / "trailing.jpg").write_bytes(good + b"\x00" * 200 + b"camera trailer, no marker in it" * 8)
    (root / "trailing_ff.jpg").write_bytes(good + b"\xff\x00\xff\xd8" + b"\x00" * 100)  # an FF byte, no EOI
    (root / "exif.jpg").write_bytes(with_exif_thumbnail(good) + b"\x00" * 100)
    expect.update(dict.fromkeys(["trailing.jpg", "trailing_ff.jpg", "exif.jpg"]))
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    thumb = with_exif_thumbnail(good)
    # cut 10 bytes into the main scan: the last 64 bytes hold the thumbnail's end-of-image marker
    (root / "truncated_after_thumbnail.jpg").write_bytes(thumb[: sos_offset(thumb) + 14 + 10])
    expect.update({"truncated.jpg": "truncated JPEG", "truncated_after_thumbnail.jpg": "truncated JPEG"})

    png = (root / "la.png").read_bytes()
    (root / "trailing.png").write_bytes(png + b"\x00" * 300)
    (root / "truncated.png").write_bytes(png[: len(png) - 30])
    expect.update({"trailing.png": None, "truncated.png": "truncated PNG"})

    Image.fromarray(np.full((4, 3000, 3), 120, np.uint8)).save(root / "wide.jpg")  # the FFCV writer's crash
    Image.fromarray(np.full((3000, 4, 3), 120, np.uint8)).save(root / "tall.png")
    Image.fromarray(np.full((100, 2600, 3), 120, np.uint8)).save(root / "panorama.jpg")  # 26:1, kept
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(root / "one_pixel.jpg")
    expect.update({"wide.jpg": "extreme aspect ratio", "tall.png": "extreme aspect ratio", "panorama.jpg": None,
                   "one_pixel.jpg": None})
    return expect


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return root, hostile_files(root)


# ---------------------------------------------------------------- the verdicts


def test_problem_and_screen_give_each_file_its_verdict(hostile):
    from loaders.scan import screen

    root, expect = hostile
    for name, reason in expect.items():
        path = root / name
        for verdict in (problem(str(path)), screen(path.read_bytes())):
            if reason is None:
                assert verdict is None, (name, verdict)
            else:
                assert verdict is not None and verdict.startswith(reason), (name, verdict)
    assert problem(str(root / "missing.jpg")).startswith("not a readable")
    assert screen(b"") == "zero bytes"


def test_extreme_aspect_threshold_is_the_widest_view_at_the_smallest_scale(tmp_path):
    from loaders.scan import MAX_ASPECT

    assert MAX_ASPECT == pytest.approx((4 / 3) / 0.05)
    for width, kept in ((26, True), (27, False)):
        Image.fromarray(np.zeros((10, width * 10, 3), np.uint8)).save(tmp_path / f"{width}.png")
        assert (problem(str(tmp_path / f"{width}.png")) is None) == kept


def test_scan_cache_from_before_the_trailing_bytes_fix_is_not_reused(hostile, tmp_path):
    root, _ = hostile
    files = [str(root / "trailing.jpg"), str(root / "plain.jpg")]
    old = tmp_path / "scans" / f"{files_key(files)}.json"  # where the old scan cached its verdicts
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({files[0]: "truncated JPEG (no end-of-image marker)"}))
    assert scan(files, tmp_path) == {}
    assert scan(files, tmp_path) == {}  # and now from the new cache


# ---------------------------------------------------------------- the same pixels on every backend


def expected_pixels(name: str, root: Path) -> np.ndarray:
    """The 8-bit RGB every backend must give: 16-bit samples scaled by >> 8 (their high byte, as
    PIL reads 16-bit colour PNGs), computed here from the arrays written, not from a decoder."""
    if name in ("grey16.png", "grey16.tif", "greyalpha16.png"):
        return np.repeat((GREY16 >> 8).astype(np.uint8)[..., None], 3, -1)
    if name in ("rgb16.png", "rgba16.png"):
        return (RGB16 >> 8).astype(np.uint8)
    with Image.open(root / name) as im:
        return np.asarray(im.convert("RGB"))  # 8-bit modes: PIL's conversion is the reference


def stored_as_ffcv_jpeg(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as FFCV's writer stores it (OpenCV's JPEG of quality 95), decoded as the test reads it."""
    import io

    import cv2

    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), 95])
    with Image.open(io.BytesIO(encoded.tobytes())) as im:
        return np.asarray(im.convert("RGB"))


KEPT_IMAGES = ["grey16.png", "rgb16.png", "rgba16.png", "greyalpha16.png", "grey16.tif", "la.png", "palette_trns.png",
               "bilevel.png", "cmyk.jpg", "plain.jpg", "trailing.jpg", "exif.jpg", "trailing.png"]
SIXTEEN_BIT = {"grey16.png", "rgb16.png", "rgba16.png", "greyalpha16.png", "grey16.tif"}


def decoded_by(backend: str, paths: list[str], tmp_path: Path, monkeypatch) -> list[np.ndarray]:
    """Each file as ``backend`` decodes it for training, (H, W, 3) uint8."""
    if backend == "pil":
        return [np.asarray(open_rgb(p)) for p in paths]
    if backend == "nvjpeg":
        from torchvision.io import read_file

        from loaders.nvjpeg import decode_batch

        images = decode_batch([read_file(p) for p in paths], paths, torch.device("cpu"))
        return [im.permute(1, 2, 0).numpy() for im in images]
    if backend == "dali":
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=1, num_threads=1, device_id=None)
        def pipe():  # the decode of loaders/dali.py on the CPU
            encoded, _ = fn.readers.file(files=paths)
            return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

        p = pipe()
        p.build()
        return [np.array(p.run()[0][0]) for _ in paths]
    monkeypatch.setenv("SSLIGHT_DATA", str(tmp_path / "cache"))
    from ffcv.reader import Reader

    beton = ffcv.beton_for(Split(paths, [0] * len(paths)), workers=1, longest_side=4096)
    reader = Reader(str(beton))
    data = np.fromfile(beton, np.uint8)
    out = []
    for meta in reader.metadata["f0"]:  # the images as the .beton stores them (JPEG, quality 95)
        size = reader.alloc_table["size"][reader.alloc_table["ptr"] == meta["data_ptr"]][0]
        with Image.open(__import__("io").BytesIO(data[meta["data_ptr"]:meta["data_ptr"] + size].tobytes())) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


BACKENDS = ["pil", "nvjpeg",
            pytest.param("dali", marks=pytest.mark.skipif(not dali.available(), reason="dali not installed")),
            pytest.param("ffcv", marks=pytest.mark.skipif(not ffcv.available(), reason="ffcv not installed"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_kept_image_decodes_to_the_same_8bit_rgb(hostile, backend, tmp_path, monkeypatch):
    root, _ = hostile
    paths = [str(root / n) for n in KEPT_IMAGES]
    for name, image in zip(KEPT_IMAGES, decoded_by(backend, paths, tmp_path, monkeypatch)):
        want = expected_pixels(name, root)
        assert image.dtype == np.uint8 and image.shape == want.shape, (name, image.dtype, image.shape)
        if backend == "ffcv":  # stored as a JPEG of quality 95, encoded by OpenCV
            want = stored_as_ffcv_jpeg(want)
        diff = np.abs(image.astype(int) - want)
        if backend == "dali" and name in SIXTEEN_BIT:  # DALI rounds 16 -> 8 bits, the others truncate
            assert diff.max() <= 1, (name, diff.max())
        elif name.endswith(".jpg"):  # JPEG decoders (libjpeg-turbo builds) agree within one level
            assert diff.max() <= 1, (name, diff.max())
        else:
            assert diff.max() == 0, (name, diff.max())


# ---------------------------------------------------------------- no backend hangs on one image


@contextmanager
def deadline(seconds: int):
    """Fails (raises in the main thread) instead of hanging past ``seconds``."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not ffcv.available(), reason="ffcv not installed")
def test_ffcv_writer_failing_in_a_worker_ends_with_one_line(hostile, tmp_path, monkeypatch, capfd):
    """Files the screening would exclude, handed to the .beton writer directly: an image of
    extreme aspect ratio is stored (at least one pixel per side), an unreadable one stops the
    writer with one line naming the file, within seconds, leaving no .beton behind."""
    root, _ = hostile
    monkeypatch.setenv("SSLIGHT_DATA", str(tmp_path / "cache"))
    with deadline(60):
        beton = ffcv.beton_for(Split([str(root / "wide.jpg"), str(root / "tall.png")], [0, 1]), workers=2,
                               longest_side=64)
    from ffcv.reader import Reader

    stored = Reader(str(beton)).metadata["f0"]
    assert sorted(zip(stored["width"], stored["height"])) == [(1, 64), (64, 1)]
    text = tmp_path / "text.jpg"
    text.write_text("not an image at all\n")
    with deadline(60), pytest.raises(DataError) as error:
        ffcv.beton_for(Split([str(root / "plain.jpg"), str(text)] * 3, [0, 1] * 3), workers=2, longest_side=64)
    assert "\n" not in str(error.value) and str(text) in str(error.value)
    assert "Traceback" not in capfd.readouterr().err
    assert list((tmp_path / "cache" / "ffcv").iterdir()) == [beton]  # the failed write left nothing


# ---------------------------------------------------------------- train/ and test/ classes


def test_class_mismatch_names_the_classes_that_differ(tmp_path):
    for split, classes in (("train", ["cat", "dog", "emu", *[f"only_train_{i:02d}" for i in range(9)]]),
                           ("test", ["cat", "dog", "yak"])):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / split / c / "x.jpg")
    with pytest.raises(DataError) as error:
        discover(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "only in train/: emu, only_train_00, only_train_01, only_train_02, only_train_03 and 5 more" in message
    assert "only in test/: yak" in message
