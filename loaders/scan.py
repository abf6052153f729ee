"""The one screening every backend and the packer share: a one-time, cached scan that excludes
files no backend can use, each with its reason.

Checked per file, cheaply enough for ImageNet-sized datasets: zero bytes; an image header PIL
can parse; a pixel mode every backend turns into the same 8-bit RGB (:data:`RGB_MODES`); an
aspect ratio a view can be cut from (:data:`MAX_ASPECT`); JPEG and PNG files that end where
their format says they end (end-of-image marker, IEND chunk), which catches truncation without
decoding: the file's last bytes first, and only when they lack the end, the whole file walked
(so bytes after the end, which cameras and editors leave, are accepted). Formats with no end
marker are decoded. :func:`problem` reads a file, :func:`screen` bytes already read (the packer),
with the same rules. The result is cached in the data directory, keyed on the files' paths,
sizes and mtimes and :data:`VERSION`. A scan long enough to be noticed says so on stderr: a bar
in a terminal, one line elsewhere (a batch job's log gets no redrawn frames).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from PIL import Image
from rich.console import Console
from rich.progress import track

# the scan's rules: bump when a verdict changes, so scans cached by an older version are not
# reused (2: bytes after a JPEG's or PNG's end accepted, pixel modes and aspect ratio checked)
VERSION = 2
TAIL = 64  # bytes read from a file's end, where its end marker is unless bytes follow it
ANNOUNCED = 10_000  # files; fewer are checked in seconds

# Every view of every recipe is a crop of at most 4:3 (the widest aspect ratio a view takes,
# docs/design.md) covering at least 5% of the image (the smallest crop scale). An image more than
# (4/3) / 0.05 = 26.7 times longer than wide has no such crop: its largest 4:3 box covers less than
# 5% of it, so every view would be the geometry's fallback, one centre box stretched many times
# over. Such strips carry nothing a view can use, and they break resizers (FFCV's .beton writer
# scales a 3000x4 image to 0 pixels): excluded for every backend alike. Panoramas (up to ~10:1)
# and banners (728x90, 8:1) are kept.
MAX_ASPECT = (4 / 3) / 0.05
# PIL's modes that every backend turns into the same 8-bit RGB (tests/test_screening.py checks
# them on pil, nvjpeg, dali and ffcv): grey, palette, alpha dropped, CMYK, and 16-bit samples
# scaled by their high byte (loaders.images.open_rgb). 16-bit colour PNGs open as RGB/RGBA.
RGB_MODES = frozenset(["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I;16L", "I;16B", "I;16N"])
WIDE_MODES = {"I": "32-bit integer", "F": "32-bit float"}  # values with no defined white level

JPEG_EOI = b"\xff\xd9"
JPEG_UNSIZED = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM and RSTn: markers without a length
# a marker inside a JPEG's scans: 0xFF (and any fill 0xFF bytes) then a byte that is neither a
# stuffed zero nor another fill byte
JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the whole IEND chunk: length 0, type, CRC


def problem(path: str) -> str | None:
    """Why the file at ``path`` cannot be used, or None when it can."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            return _verdict(f, size)
    except OSError as exc:
        return f"not a readable image ({type(exc).__name__})"


def screen(data: bytes) -> str | None:
    """:func:`problem` for a file's bytes already read: the same rules, the same reasons."""
    return _verdict(io.BytesIO(data), len(data))


def _verdict(f: BinaryIO, size: int) -> str | None:
    if size == 0:
        return "zero bytes"
    head = f.read(8)
    f.seek(0)
    try:
        with Image.open(f) as im:
            fmt, mode, (width, height) = im.format, im.mode, im.size
            if fmt not in ("JPEG", "PNG", "MPO"):
                im.load()
    except Exception as exc:  # noqa: BLE001  (PIL's plugins raise many kinds on hostile bytes: all are the file's)
        return f"not a readable image ({type(exc).__name__})"
    if mode in WIDE_MODES:
        return f"{WIDE_MODES[mode]} pixels (mode {mode}): no defined 8-bit scale; save it with 8 or 16 bits"
    if mode not in RGB_MODES:
        return f"pixel mode {mode}: not one every backend converts to RGB alike ({', '.join(sorted(RGB_MODES))})"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"extreme aspect ratio ({width}x{height}; at most {MAX_ASPECT:.1f}:1, beyond it no view fits)"
    if head.startswith(b"\xff\xd8"):
        return _jpeg_end(f, size)
    if head.startswith(b"\x89PNG"):
        return _png_end(f, size)
    return None


def _first_scan(f: BinaryIO, size: int) -> int | None:
    """Where a JPEG's first start-of-scan marker is, walking its header's segments (an EXIF
    thumbnail, inside an APP1 segment, is skipped whole); None when the file ends first."""
    at = 2
    while at + 2 <= size:
        f.seek(at)
        marker = f.read(4)
        if marker[0] != 0xFF:
            return None
        if marker[1] == 0xFF:  # fill byte
            at += 1
        elif marker[1] in JPEG_UNSIZED:
            at += 2
        elif marker[1] == 0xDA:
            return at
        elif marker[1] == 0xD9 or len(marker) < 4:
            return None
        else:
            at += 2 + int.from_bytes(marker[2:4], "big")
    return None


def _scans_end(data: bytes) -> bool:
    """Whether JPEG ``data``, from its first start-of-scan marker, reaches an end-of-image marker:
    segments (scan headers, tables between progressive scans) are skipped by their length, the
    entropy-coded data searched for its next marker."""
    at = 0
    while (m := JPEG_MARKER.search(data, at)) is not None:
        marker = m.group(1)[0]
        if marker == 0xD9:
            return True
        at = m.end()
        if marker not in JPEG_UNSIZED:
            if at + 2 > len(data):
                return False
            at += int.from_bytes(data[at:at + 2], "big")
    return False


def _jpeg_end(f: BinaryIO, size: int) -> str | None:
    scan = _first_scan(f, size)
    if scan is None:
        return "truncated JPEG (ends before its image data)"
    # fast path: an end-of-image marker in the last bytes, after the scan began (a thumbnail's
    # marker, before it, does not count)
    f.seek(max(scan, size - TAIL))
    if JPEG_EOI in f.read():
        return None
    f.seek(scan)  # bytes follow the end, or the file is truncated: walk the scans
    if _scans_end(f.read()):
        return None
    return "truncated JPEG (no end-of-image marker)"


def _png_end(f: BinaryIO, size: int) -> str | None:
    f.seek(max(0, size - TAIL))
    if PNG_IEND in f.read():
        return None
    at = 8  # bytes follow the end, or the file is truncated: walk the chunks
    while at + 8 <= size:
        f.seek(at)
        header = f.read(8)
        if header[4:8] == b"IEND":
            return None
        at += 12 + int.from_bytes(header[:4], "big")  # length, type, data, CRC
    return "truncated PNG (no IEND chunk)"


def files_key(files: list[str]) -> str:
    h = hashlib.sha1()
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()


def scan(files: list[str], cache_dir: Path, workers: int = 8) -> dict[str, str]:
    """{path: reason} for every unusable file; cached by the files' identity and the rules' version."""
    cache = cache_dir / "scans" / f"{files_key(files)}-v{VERSION}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    console = Console(stderr=True)
    announced = len(files) >= ANNOUNCED
    if announced:
        print(f"checking {len(files)} images for unreadable files (once; the result is cached in {cache.parent})",
              file=sys.stderr, flush=True)
    with ThreadPoolExecutor(workers) as pool:
        checked = track(pool.map(problem, files), total=len(files), description="checking images",
                        console=console, transient=True, disable=not (announced and console.is_terminal))
        reasons = dict(zip(files, checked))
    bad = {f: r for f, r in reasons.items() if r is not None}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(bad, indent=1))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(cache)
    return bad
