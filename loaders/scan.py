"""A one-time, cached scan that excludes files no backend can use.

Checked per file, cheaply enough for ImageNet-sized datasets: zero bytes; an image header PIL
can parse; JPEG and PNG files that end where their format says they end (EOI marker, IEND
chunk), which catches truncation without decoding. Formats with no end marker are decoded.
The result is cached in the data directory, keyed on the files' paths, sizes and mtimes. A scan
long enough to be noticed says so on stderr: a bar in a terminal, one line elsewhere (a batch
job's log gets no redrawn frames).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.progress import track

TAIL = 64
ANNOUNCED = 10_000  # files; fewer are checked in seconds


def problem(path: str) -> str | None:
    """Why ``path`` cannot be used, or None when it can."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "zero bytes"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - TAIL))
            tail = f.read()
        with Image.open(path) as im:
            fmt = im.format
            if fmt not in ("JPEG", "PNG", "MPO"):
                im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"not a readable image ({type(exc).__name__})"
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    return None


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
    """{path: reason} for every unusable file; cached by the files' identity."""
    cache = cache_dir / "scans" / f"{files_key(files)}.json"
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
    tmp.write_text(json.dumps(bad, indent=1))
    tmp.replace(cache)
    return bad
