"""Packing a dataset once into tar shards every loader reads, from disk or over HTTP.

``pack(src, dst)`` turns an ImageFolder (train/ and val/ or test/), a plain class-folder tree, a
flat folder of images or CIFAR-10 into::

    DST/index.json                              written last, atomically ("complete": true)
    DST/<split>/000000.tar  DST/<split>/000000.idx   ...

Per sample, in a fixed random order of the files :func:`loaders.datasets.discover` lists
(so that a shard mixes the classes; unusable files left out, the rest numbered 0..N-1 per split), the members ``<key>.jpg`` (JPEG bytes as they are) or
``<key>.png`` (any other image as 8-bit RGB), ``<key>.cls`` (the label in ASCII, -1 when
unlabelled) and ``<key>.index`` (the sample's number, 8 bytes little-endian: DALI reads it as
INT64); ``--reencode Q`` makes every image a JPEG of quality Q. ``NNNNNN.idx`` is DALI's
webdataset index of its tar (the format of DALI's ``wds2idx``). index.json holds the classes,
the source and its key, each shard's samples with the byte offset and size of every image in the
tar and its label, the image-size statistics and the excluded files with their reasons.

Every file is read once: the bytes read are screened (:mod:`loaders.scan`), measured from their
header and stored, by a pool of threads; one writer fills the shards in order. A shard is
written to a temporary file, fsynced and renamed, then its record (``DST/.pack/``) is written the
same way, so a pack stopped at any moment keeps its complete shards: the same command again goes
on from there (the source and the options must be the same, else it refuses) and writes the
same bytes an uninterrupted pack would.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import statistics
import tarfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from loaders.scan import files_key, screen
from loaders.datasets import EVAL_SPLITS, DataError, Split, discover, prepare_cifar10
from loaders.images import JPEG_MAGIC, image_size, open_rgb
from loaders.shards import FORMAT, INDEX, VERSION  # the format, defined once: where it is read
STATE = ".pack"  # records of the complete shards of a pack not yet finished
PACK_ORDER_SEED = 0x9AC4  # the samples' order in a pack: fixed, so a resumed pack continues the same one
DEFAULT_SHARD_BYTES = 256 << 20
MIN_SHARD_BYTES = 4 << 10
BLOCK = 512
END = 2 * BLOCK  # a tar ends with two zero blocks
WRITE_BUFFER = 16 << 20
IDX_VERSION = "v1.2"  # DALI's wds2idx index format
UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
         "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}
CIFAR_NAMES = ("", "cifar10")
SHOWN_EXCLUDED = 20  # the report lists this many excluded files; index.json lists them all


def parse_size(text: str) -> int:
    """Bytes from ``256MB``, ``1GB``, ``64 MiB``, ``500K`` or a plain number (K/M/G are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match and UNITS.get(match.group(2).upper())
    if not match or not unit:
        raise DataError(f"--shard-size {text!r}: not a size; allowed: a number of bytes with an optional unit, "
                        "e.g. 256MB, 1GB, 500KB")
    size = int(float(match.group(1)) * unit)
    if size < MIN_SHARD_BYTES:
        raise DataError(f"--shard-size {text!r}: under the smallest shard, {human(MIN_SHARD_BYTES)}")
    return size


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def parse_quality(text) -> int | None:
    """--reencode's JPEG quality (1-100), None when empty."""
    if text in (None, ""):
        return None
    try:
        quality = int(text)
    except (TypeError, ValueError):
        quality = 0
    if not 1 <= quality <= 100:
        raise DataError(f"--reencode {text!r}: allowed: a JPEG quality from 1 to 100 (or nothing: JPEG bytes as "
                        "they are, other images as PNG)")
    return quality


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class Item:
    """One source file, read and screened: its bytes to store, or the reason it is left out."""

    position: int  # in the split's file list
    path: str
    label: int
    data: bytes = b""
    ext: str = ""
    width: int = 0
    height: int = 0
    reason: str | None = None


def encoded(im: Image.Image, fmt: str, quality: int | None) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        im.save(out, "JPEG", quality=quality)
    else:
        im.save(out, "PNG", compress_level=6)
    return out.getvalue()


def read_item(position: int, path: str, label: int, quality: int | None) -> Item:
    """Read, screen, measure and (where needed) convert one file; runs in the reading threads. The
    image is converted by :func:`loaders.images.open_rgb`, as the loaders convert it."""
    item = Item(position, path, label)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        item.reason = f"not readable ({type(exc).__name__})"
        return item
    item.reason = screen(data)  # the one screening every backend applies, on the bytes already read
    if item.reason:
        return item
    try:
        item.width, item.height = image_size(data)
        if quality is None and data[:2] == JPEG_MAGIC:
            item.data, item.ext = data, "jpg"
        else:
            im = open_rgb(data)
            item.data, item.ext = (encoded(im, "JPEG", quality), "jpg") if quality else (encoded(im, "PNG", None),
                                                                                         "png")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        item.reason = f"not convertible to 8-bit RGB ({type(exc).__name__})"
    return item


def read_ahead(split: Split, start: int, quality: int | None, workers: int):
    """The split's files from ``start`` on, read by ``workers`` threads, yielded in order; at most a
    few per thread are held at once."""
    window = workers * 4
    with ThreadPoolExecutor(workers, thread_name_prefix="pack-read") as pool:
        pending: deque = deque()
        position = start
        try:
            while position < len(split) or pending:
                while position < len(split) and len(pending) < window:
                    pending.append(pool.submit(read_item, position, split.files[position], split.labels[position],
                                               quality))
                    position += 1
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# ---------------------------------------------------------------------------------------------- writing


def fsync_write(path: Path, data: bytes) -> None:
    """``data`` into ``path``, complete or not at all."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def tarfile_header(name: str, size: int) -> bytes:
    """A member's ustar header as ``tarfile`` writes it: mode 644, owner 0, mtime 0 (so a pack's
    bytes depend on its source and options alone)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o644, 0, tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


HEADER = tarfile_header("", 0)  # the fields every member shares; the name, size and checksum change
HEADER_SUM = sum(HEADER[:148]) + sum(HEADER[156:]) + 8 * 32  # the checksum counts its own field as spaces


def member_header(name: str, size: int) -> bytes:
    """:func:`tarfile_header`, about 20 times faster (the packer writes three per image)."""
    raw_name, raw_size = name.encode(), b"%011o\0" % size
    if len(raw_name) > 100 or len(raw_size) > 12:
        return tarfile_header(name, size)
    header = bytearray(HEADER)
    header[:len(raw_name)] = raw_name
    header[124:136] = raw_size
    checksum = HEADER_SUM + sum(raw_name) + sum(raw_size) - sum(HEADER[124:136])
    header[148:155] = b"%06o\0" % checksum
    return bytes(header)


def sample_members(index: int, item: Item) -> list[tuple[str, str, bytes]]:
    key = f"{index:08d}"
    return [(item.ext, f"{key}.{item.ext}", item.data), ("cls", f"{key}.cls", str(item.label).encode()),
            ("index", f"{key}.index", index.to_bytes(8, "little", signed=True))]


def sample_bytes(item: Item) -> int:
    """What one sample adds to a tar: three headers and their padded data."""
    return 3 * BLOCK + padded(len(item.data)) + BLOCK + BLOCK  # .cls and .index fit one block each


class ShardWriter:
    """One tar and its DALI index, written to temporary files and renamed when finished."""

    def __init__(self, folder: Path, number: int, first: int):
        self.folder, self.number, self.first = folder, number, first
        self.name = f"{number:06d}"
        self.tmp = folder / f".{self.name}.tar.tmp-{os.getpid()}"
        self.file = open(self.tmp, "wb", buffering=WRITE_BUFFER)
        self.offset = 0
        self.offsets: list[int] = []
        self.sizes: list[int] = []
        self.labels: list[int] = []
        self.widths: list[int] = []
        self.heights: list[int] = []
        self.idx_lines: list[str] = []

    @property
    def samples(self) -> int:
        return len(self.offsets)

    def fits(self, item: Item, limit: int) -> bool:
        return not self.samples or self.offset + sample_bytes(item) + END <= limit

    def add(self, index: int, item: Item) -> None:
        parts, chunks = [], []
        for ext, name, data in sample_members(index, item):
            header = member_header(name, len(data))
            self.offset += len(header)
            parts.append(f"{ext} {self.offset} {len(data)} {name}")
            if ext == item.ext:
                self.offsets.append(self.offset)
                self.sizes.append(len(data))
            chunks += [header, data, b"\0" * (padded(len(data)) - len(data))]
            self.offset += padded(len(data))
        # one write per sample into a large buffer: each flush lets the reading threads take the GIL,
        # and getting it back costs the writer up to a switch interval
        self.file.write(b"".join(chunks))
        self.idx_lines.append(" ".join(parts))
        self.labels.append(item.label)
        self.widths.append(item.width)
        self.heights.append(item.height)

    def finish(self, split: str) -> dict:
        """The tar and its index complete and in place; the shard's record (without its sizes)."""
        self.file.write(b"\0" * END)
        self.offset += END
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        idx = f"{IDX_VERSION} {self.samples}\n" + "".join(line + "\n" for line in self.idx_lines)
        fsync_write(self.folder / f"{self.name}.idx", idx.encode())
        os.replace(self.tmp, self.folder / f"{self.name}.tar")
        fsync_dir(self.folder)
        return {"tar": f"{split}/{self.name}.tar", "idx": f"{split}/{self.name}.idx", "bytes": self.offset,
                "samples": self.samples, "offsets": self.offsets, "sizes": self.sizes, "labels": self.labels}

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- the pack


@dataclass
class Source:
    root: Path
    splits: list[tuple[str, Split]]  # ("train", ...), then ("val" or "test", ...) as in the source
    classes: list[str]
    key: str
    options: dict

    @property
    def files(self) -> int:
        return sum(len(split) for _, split in self.splits)


def resolve_source(src: str) -> Path:
    if str(src).lower() in CIFAR_NAMES:
        return prepare_cifar10().resolve()
    path = Path(src).expanduser()
    if not path.is_dir():
        raise DataError(f"SRC={src}: no such folder; allowed: a folder with train/ (and val/ or test/), an "
                        "ImageFolder tree, a folder of images, or cifar10")
    return path.resolve()


def source_key(splits: list[tuple[str, Split]], options: dict) -> str:
    h = hashlib.sha1(json.dumps(options, sort_keys=True).encode())
    for name, split in splits:
        h.update(f"{name}\0{files_key(split.files)}\n".encode())
    return h.hexdigest()


def shuffled(split: Split) -> Split:
    """The split in a fixed random order: an ImageFolder lists class after class, and a reader's
    bounded shuffle buffer (the loaders', DALI's) would then fill a batch from one class or two."""
    order = np.random.default_rng(PACK_ORDER_SEED).permutation(len(split))
    return Split([split.files[i] for i in order], [split.labels[i] for i in order])


def read_source(src: str, options: dict) -> Source:
    root = resolve_source(src)
    try:
        dataset = discover(root)
    except DataError as exc:
        raise DataError(str(exc).replace(f"data.path={str(root)!r}", f"SRC={src or root}")) from None
    splits = [("train", shuffled(dataset.train))]
    if dataset.test is not None:
        present = {d.name.lower() for d in root.iterdir() if d.is_dir()}
        splits.append((next(s for s in EVAL_SPLITS if s in present), shuffled(dataset.test)))
    return Source(root, splits, dataset.classes, source_key(splits, options), options)


def described(path: str, options: dict) -> str:
    how = f"re-encoded as JPEG quality {options['reencode']}" if options.get("reencode") else "images as they are"
    return f"{path} (shards of {human(options['shard_bytes'])}, {how})"


class Destination:
    """DST and the state of a pack into it: new, to resume, or already complete."""

    def __init__(self, dst: str, source: Source):
        self.arg = dst
        if not dst or "://" in str(dst):
            raise DataError(f"DST={dst}: allowed: a local folder (new or empty, or one a pack was writing); serve it "
                            "over HTTP once it is packed")
        self.root = Path(dst).expanduser().absolute()
        self.state = self.root / STATE
        self.source = source
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"DST={dst}: a file, not a folder; allowed: a new or empty folder, or one this pack "
                            "was writing (to resume)")
        if self.root.resolve() == source.root or source.root in self.root.resolve().parents:
            raise DataError(f"DST={dst}: inside SRC={source.root}; allowed: a folder outside the source")

    def check(self) -> bool:
        """True when DST already holds this pack, complete; refuses another dataset or options."""
        index = self.read_json(self.root / INDEX)
        begun = self.read_json(self.state / "source.json")
        found = index.get("source", {}) if index.get("complete") else begun
        if found:
            if found.get("key") != self.source.key:
                self.refuse(found.get("path", "?"), index.get("options") or begun.get("options") or {})
            return bool(index.get("complete"))
        if self.root.is_dir() and any(p != self.state or any(p.iterdir()) for p in self.root.iterdir()):
            raise DataError(f"DST={self.arg}: not empty and holds no pack; allowed: a new or empty folder, or one "
                            "a pack was writing (to resume)")
        return False

    def refuse(self, path: str, options: dict) -> None:
        theirs = described(path, options) if options else path
        same = path == str(self.source.root) and options == self.source.options
        raise DataError(f"DST={self.arg} holds a pack of {theirs}{' whose files have changed since' if same else ''}; "
                        f"this pack is of {described(str(self.source.root), self.source.options)}: one folder "
                        "never mixes two packs: pack into another folder, or remove this one first")

    @staticmethod
    def read_json(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def begin(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob("**/.*.tmp-*"):  # a killed writer's temporary files
            tmp.unlink(missing_ok=True)
        record = self.state / "source.json"
        if not record.exists():
            fsync_write(record, json.dumps({"path": str(self.source.root), "key": self.source.key,
                                            "options": self.source.options}).encode())

    def done_shards(self, split: str) -> list[dict]:
        """The records of the split's complete shards, in order (up to the first missing one)."""
        shards = []
        while True:
            record = self.read_json(self.state / f"{split}-{len(shards):06d}.json")
            if not record:
                return shards
            tar = record.get("tar")
            if tar is not None and not (self.root / tar).is_file():
                return shards
            if tar is not None and (self.root / tar).stat().st_size != record["bytes"]:
                return shards
            shards.append(record)
            if record.get("last"):
                return shards

    def record(self, split: str, number: int, record: dict) -> None:
        fsync_write(self.state / f"{split}-{number:06d}.json", json.dumps(record, separators=(",", ":")).encode())


@dataclass
class Packed:
    """What a pack did, for the report."""

    index: dict
    root: Path
    seconds: float = 0.0
    images: int = 0  # read in this run
    resumed: int = 0  # samples kept from an interrupted pack
    already: bool = False
    rate: float = 0.0  # images/s while reading and writing (listing the source and preparing CIFAR-10 apart)


def stats(values: list[int]) -> list[int]:
    return [min(values), statistics.median_low(values), max(values)] if values else []


def pack_split(dest: Destination, name: str, split: Split, quality: int | None, workers: int, progress,
               after_shard: Callable[[str, int], None] | None) -> int:
    """Write the split's missing shards; the number of images read."""
    shards = dest.done_shards(name)
    if shards and shards[-1].get("last"):
        return 0
    position = shards[-1]["next_file"] if shards else 0
    sample = sum(s["samples"] for s in shards)
    folder = dest.root / name
    folder.mkdir(parents=True, exist_ok=True)
    limit = dest.source.options["shard_bytes"]
    writer: ShardWriter | None = None
    excluded: dict[str, str] = {}
    read = 0

    def close(next_file: int, last: bool) -> None:
        nonlocal writer, excluded
        if writer is not None:
            record = writer.finish(name)
            record.update(widths=writer.widths, heights=writer.heights)
            number = writer.number
        else:  # nothing readable left in the split
            record, number = {"tar": None, "samples": 0}, len(shards)
        record.update(first=sample - record["samples"], next_file=next_file, excluded=excluded, last=last)
        dest.record(name, number, record)
        shards.append(record)
        writer, excluded = None, {}
        if after_shard is not None:
            after_shard(name, number)

    try:
        for item in read_ahead(split, position, quality, workers):
            read += 1
            progress.advance()
            if item.reason:
                excluded[os.path.relpath(item.path, dest.source.root)] = item.reason
                continue
            if writer is not None and not writer.fits(item, limit):
                close(item.position, last=False)
            if writer is None:
                writer = ShardWriter(folder, len(shards), sample)
            writer.add(sample, item)
            sample += 1
        close(len(split), last=True)
    finally:
        if writer is not None:
            writer.discard()
    return read


def index_of(dest: Destination) -> dict:
    source = dest.source
    splits, excluded = {}, {}
    for name, _ in source.splits:
        records = dest.done_shards(name)
        for record in records:
            excluded.update(record.get("excluded", {}))
        shards = [{k: r[k] for k in ("tar", "idx", "bytes", "samples", "offsets", "sizes", "labels")}
                  for r in records if r.get("tar") is not None]
        samples = sum(s["samples"] for s in shards)
        if not samples:
            continue
        widths = [w for r in records for w in r.get("widths", [])]
        heights = [h for r in records for h in r.get("heights", [])]
        splits[name] = {"samples": samples, "image_size": {"width": stats(widths), "height": stats(heights)},
                        "shards": shards}
    if "train" not in splits:
        raise DataError(f"SRC={source.root}: none of the images of train/ is readable "
                        f"({len(excluded)} excluded, e.g. {next(iter(excluded.items()), ('', ''))[0]})")
    return {"format": FORMAT, "version": VERSION, "classes": source.classes,
            "source": {"path": str(source.root), "key": source.key}, "options": source.options,
            "splits": splits, "excluded": excluded, "complete": True}


class Quiet:
    def start(self, total: int, done: int) -> None:
        pass

    def advance(self) -> None:
        pass

    def stop(self) -> None:
        pass


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(4, min(32, 2 * cores))


def pack(src: str, dst: str, shard_bytes: int = DEFAULT_SHARD_BYTES, reencode: int | None = None,
         workers: int = 0, progress=None, after_shard: Callable[[str, int], None] | None = None) -> Packed:
    """Pack SRC ("" or "cifar10": CIFAR-10) into DST; see the module's docstring. ``progress``: an
    object with start(total, done), advance() and stop() (:class:`Bar`); ``after_shard(split,
    number)`` is called after each complete shard."""
    started = time.monotonic()
    if shard_bytes < MIN_SHARD_BYTES:
        raise DataError(f"--shard-size {shard_bytes}: under the smallest shard, {human(MIN_SHARD_BYTES)}")
    quality = parse_quality(reencode)
    options = {"shard_bytes": int(shard_bytes), "reencode": quality}
    source = read_source(src, options)
    dest = Destination(dst, source)
    if dest.check():
        shutil.rmtree(dest.state, ignore_errors=True)
        return Packed(json.loads((dest.root / INDEX).read_text()), dest.root, already=True)
    dest.begin()
    kept = {name: dest.done_shards(name) for name, _ in source.splits}
    done = sum(r["next_file"] for records in kept.values() for r in records[-1:])
    resumed = sum(r["samples"] for records in kept.values() for r in records)
    progress = progress or Quiet()
    progress.start(source.files, done)
    reading = time.monotonic()
    read = 0
    try:
        for name, split in source.splits:
            read += pack_split(dest, name, split, quality, workers or default_workers(), progress, after_shard)
    finally:
        progress.stop()
    index = index_of(dest)
    fsync_write(dest.root / INDEX, json.dumps(index, separators=(",", ":")).encode())
    fsync_dir(dest.root)
    shutil.rmtree(dest.state, ignore_errors=True)
    now = time.monotonic()
    return Packed(index, dest.root, now - started, read, resumed, rate=read / max(now - reading, 1e-9))


# ---------------------------------------------------------------------------------------------- showing it


class Bar:
    """Progress: in a terminal a rich bar (images/s, ETA); elsewhere one plain line per tenth of the
    work, never a redrawn frame."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console()
        self.bar = None
        self.total = self.done = self.first = 0
        self.next_line = 0
        self.started = 0.0

    def start(self, total: int, done: int) -> None:
        self.total, self.done, self.first, self.started = total, done, done, time.monotonic()
        self.step = max(1, -(-total // 10))
        self.next_line = done + self.step
        if done:
            self.say(f"resuming: {done}/{total} files already packed")
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("packing"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("pack", total=total, completed=done, rate="")

    def rate(self) -> float:
        seconds = time.monotonic() - self.started
        return (self.done - self.first) / seconds if seconds > 0 else 0.0

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            if self.done % 64 == 0 or self.done == self.total:
                self.bar.update(self.task, completed=self.done, rate=f"{self.rate():,.0f} images/s")
        elif self.done >= self.next_line and self.done < self.total:
            self.next_line += self.step
            rate = self.rate()
            eta = (self.total - self.done) / rate if rate else 0
            self.say(f"packed {self.done}/{self.total} files ({100 * self.done // self.total}%), "
                     f"{rate:,.0f} images/s, ETA {int(eta) // 60}:{int(eta) % 60:02d}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def say(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False, markup=False)


def report(packed: Packed) -> list[str]:
    """The lines said when a pack ends: per split its images, shards and sizes; the excluded files."""
    index, where = packed.index, packed.root
    total = sum(s["samples"] for s in index["splits"].values())
    if packed.already:
        lines = [f"{where}: already packed from {index['source']['path']} ({total} images); nothing to do"]
    else:
        lines = [f"packed {index['source']['path']} into {where}: {total} images in {packed.seconds:.0f} s "
                 f"({packed.rate:,.0f} images/s)" + (f"; {packed.resumed} kept from the interrupted pack"
                                              if packed.resumed else "")]
    for name, split in index["splits"].items():
        size = split["image_size"]
        shards = split["shards"]
        lines.append(f"  {name}: {split['samples']} images, {len(shards)} shard{'s' * (len(shards) != 1)} "
                     f"({human(sum(s['bytes'] for s in shards))}); width {'/'.join(map(str, size['width']))}, "
                     f"height {'/'.join(map(str, size['height']))} (min/median/max)")
    excluded = index["excluded"]
    if excluded:
        lines.append(f"  excluded {len(excluded)} unreadable file{'s' * (len(excluded) != 1)} (listed in "
                     f"{where / INDEX}):")
        lines += [f"    {path}: {reason}" for path, reason in list(excluded.items())[:SHOWN_EXCLUDED]]
        if len(excluded) > SHOWN_EXCLUDED:
            lines.append(f"    ... and {len(excluded) - SHOWN_EXCLUDED} more")
    return lines

