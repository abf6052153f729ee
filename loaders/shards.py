"""Packed datasets (``sslight pack``): WebDataset tar shards with an index, read from a local folder
or over HTTP(S), without listing or stat-ing a single image.

The index (``index.json`` at the root) holds every shard's samples: the byte offset and length of
each image inside its tar and its label. So a sample is read by its byte range (``pread`` locally,
an HTTP ``Range`` request remotely) and a run of consecutive samples by one read of their span:
no tar header is parsed at read time. The tars stay plain WebDataset shards that
``tarfile``, ``webdataset`` and DALI's ``readers.webdataset`` (with the ``.idx`` files beside
them) read as they are.

Remote reads are retried with backoff after a dropped connection or a server error, resuming at
the sample where the stream stopped; a shard that stays unreadable yields ``None`` for its
remaining samples, said in one warning line, so that the caller can go on without them.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from loaders.errors import DataError

INDEX = "index.json"
FORMAT = "sslight-shards"
VERSION = 1
RETRIES = 5  # tries of one remote read before its shard counts as unreadable
BACKOFF = 0.25  # s before the second try, doubled before each next one (0.25 + 0.5 + 1 + 2 = 3.75 s in all)
TIMEOUT = 60  # s a remote read may stall before it counts as failed
CHUNK = 4 << 20  # bytes read at a time from a span


class ShardError(DataError):
    """A packed dataset that cannot be used: one line saying what and how to fix it."""


def is_http(path: str) -> bool:
    return str(path).startswith(("http://", "https://"))


def is_remote(path: str) -> bool:
    """An http(s) URL (read by this module's own client) or any other URL fsspec opens (s3://,
    gs://, file://...: read through fsspec, with its filesystem package installed)."""
    return "://" in str(path)


def is_sharded(path: str) -> bool:
    """Whether ``path`` is a packed dataset: a URL, or a local folder with an index.json."""
    return bool(path) and (is_remote(path) or (Path(path) / INDEX).is_file())


def _fsspec_open(location: str):
    try:
        import fsspec

        return fsspec.open(location, "rb").open()
    except ImportError as exc:  # the URL's filesystem (s3fs, gcsfs...) is not installed
        raise ShardError(f"data.path={location!r}: {exc}") from None


def _join(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}" if is_remote(root) else str(Path(root) / relative)


@dataclass
class Shard:
    tar: str  # absolute local path or full URL
    idx: str  # DALI's index of the tar, beside it
    offsets: np.ndarray  # int64: each sample's image bytes start here in the tar...
    sizes: np.ndarray  # ...and are this long
    labels: np.ndarray  # int64, -1 when unlabelled

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class ShardedSplit:
    """One split of a packed dataset: what a folder's ``Split`` is for a folder, read by sample
    index (0..N-1 in pack order, shard after shard)."""

    root: str
    name: str  # the split's folder in the pack (train, val, test)
    shards: list[Shard]
    key: str  # identity for caches: the index's digest, the split and its size
    starts: np.ndarray = field(init=False)  # first sample index of each shard
    unreadable: set[int] = field(default_factory=set, compare=False)  # shards given up on, in this process

    def __post_init__(self):
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in self.shards])]).astype(np.int64)

    @property
    def local(self) -> bool:
        return not is_remote(self.root)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @functools.cached_property
    def labels(self) -> list[int]:
        return np.concatenate([s.labels for s in self.shards]).tolist() if self.shards else []

    def sample_name(self, index: int) -> str:
        """What messages call sample ``index``: ``train/000003.tar:00012345``."""
        return f"{self.name}/{self.shards[self.locate(index)[0]].tar.rsplit('/', 1)[-1]}:{index:08d}"

    @functools.cached_property
    def files(self) -> list[str]:
        """:meth:`sample_name` of every sample (for cache digests and subsets, as a folder's paths)."""
        return [self.sample_name(i) for i in range(len(self))]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, sample number in that shard) of sample ``index``."""
        s = int(np.searchsorted(self.starts, index, side="right")) - 1
        return s, index - int(self.starts[s])

    def read(self, index: int) -> bytes:
        """Sample ``index``'s image bytes, alone (random access: a pread or one Range request)."""
        s, j = self.locate(index)
        shard = self.shards[s]
        if s in self.unreadable:
            raise ShardError(f"{shard.tar}: unreadable")
        start, size = int(shard.offsets[j]), int(shard.sizes[j])
        for tries in range(RETRIES):
            try:
                return read_range(shard.tar, start, size)
            except (OSError, http.client.HTTPException) as exc:
                if not is_remote(shard.tar):
                    raise ShardError(f"{shard.tar}: sample {index} unreadable ({exc})") from None
                if tries == RETRIES - 1:
                    self._give_up(s, f"{shard.tar}: unreadable after {RETRIES} tries ({exc})")
                    raise ShardError(f"{shard.tar}: sample {index} unreadable ({exc})") from None
                time.sleep(BACKOFF * 2 ** tries)
        raise AssertionError("unreachable")

    def read_many(self, indices: list[int]) -> list[bytes | None]:
        """The image bytes of ``indices``, with one read per run of consecutive samples of a shard:
        an evaluation batch, in pack order, is one or two reads (one or two Range requests over
        HTTP) where :meth:`read` makes one per image. None for each sample of a remote shard that
        stays unreadable, said once as :meth:`read` says it."""
        out: list[bytes | None] = [None] * len(indices)
        k = 0
        while k < len(indices):
            s, first = self.locate(indices[k])
            shard, n = self.shards[s], 1
            while k + n < len(indices) and first + n < len(shard) and indices[k + n] == indices[k] + n:
                n += 1
            if s not in self.unreadable:
                try:
                    for j, data in (_remote_span if is_remote(shard.tar) else _local_span)(shard, first, first + n):
                        out[k + j - first] = data
                except OSError as exc:  # a local file: a broken disk, not a network to wait for
                    raise ShardError(f"{shard.tar}: samples {first}-{first + n - 1} unreadable ({exc})") from None
                except ShardError as exc:  # a remote shard, after its retries
                    self._give_up(s, str(exc))
            k += n
        return out

    def _give_up(self, s: int, why: str) -> None:
        """The shard's other samples fail at once from now on, in this process."""
        self.unreadable.add(s)
        print(f"warning: {why}; its samples are left out", file=sys.stderr, flush=True)

    def subset(self, n: int, seed: int) -> "ShardedSplit":
        """The first ``n`` samples in pack order: whole shards, then the head of one. (A folder's
        subset is a random one; here a prefix keeps reads sequential, and the pack's order is already
        a random one, so ``seed`` is unused: the prefix is the same for every seed.)"""
        if not n or n >= len(self):
            return self
        s, j = self.locate(n)
        shards = self.shards[:s] + ([Shard(self.shards[s].tar, self.shards[s].idx, self.shards[s].offsets[:j],
                                           self.shards[s].sizes[:j], self.shards[s].labels[:j])] if j else [])
        return ShardedSplit(self.root, self.name, shards, f"{self.key}:{n}")

    def without(self, bad) -> "ShardedSplit":
        """Packing screened every image and left the bad ones out: nothing to exclude here."""
        return self


# ---- reading bytes: local files and HTTP(S) ----

class _Connections:
    """One keep-alive HTTP connection per server in this process (a DataLoader worker has its own)."""

    def __init__(self):
        self.pid, self.open = os.getpid(), {}

    def get(self, url: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        if self.pid != os.getpid():  # a forked worker must not share its parent's sockets
            self.pid, self.open = os.getpid(), {}
        key = (url.scheme, url.netloc)
        if key not in self.open:
            kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
            self.open[key] = kind(url.netloc, timeout=TIMEOUT)
        return self.open[key]

    def drop(self, url: urllib.parse.SplitResult) -> None:
        conn = self.open.pop((url.scheme, url.netloc), None)
        if conn is not None:
            conn.close()


_connections = _Connections()


class _Body:
    """An HTTP response body from byte ``start`` on: a 206 answers the Range request; a server
    that ignores Range (200, e.g. ``python -m http.server``) sends the whole file, whose head is
    skipped here."""

    def __init__(self, url: str, start: int, stop: int | None):
        self.url = urllib.parse.urlsplit(url)
        conn = _connections.get(self.url)
        path = self.url.path + (f"?{self.url.query}" if self.url.query else "")
        wanted = f"bytes={start}-{'' if stop is None else stop - 1}"
        try:
            conn.request("GET", path, headers={"Range": wanted})
            self.response = conn.getresponse()
        except (OSError, http.client.HTTPException):
            _connections.drop(self.url)
            raise
        if self.response.status not in (200, 206):
            self.response.read()
            gone = FileNotFoundError if self.response.status in (404, 410) else OSError
            raise gone(f"HTTP {self.response.status} {self.response.reason}")
        if self.response.status == 200:
            self.skip(start)

    def skip(self, n: int) -> None:
        while n > 0:
            got = len(self.read(min(n, CHUNK)))
            if not got:
                raise OSError("connection closed early")
            n -= got

    def read(self, n: int) -> bytes:
        try:
            return self.response.read(None if n < 0 else n)
        except (OSError, http.client.HTTPException):
            _connections.drop(self.url)
            raise

    def close(self) -> None:
        """Leaves the connection reusable when the body was read to its end, else closes it."""
        if not self.response.isclosed():
            _connections.drop(self.url)


class _FileBody:
    """:class:`_Body`'s reads from a file fsspec opens."""

    def __init__(self, location: str, start: int, stop: int | None):
        self.file = _fsspec_open(location)
        self.file.seek(start)

    def skip(self, n: int) -> None:
        self.file.seek(n, os.SEEK_CUR)

    def read(self, n: int) -> bytes:
        return self.file.read(n)

    def close(self) -> None:
        self.file.close()


def _body(location: str, start: int, stop: int | None):
    return (_Body if is_http(location) else _FileBody)(location, start, stop)


def read_range(location: str, start: int, size: int) -> bytes:
    """``size`` bytes of a local file or URL from byte ``start``."""
    if not is_remote(location):
        with open(location, "rb") as f:
            data = os.pread(f.fileno(), size, start)
    else:
        body = _body(location, start, start + size)
        try:
            data = body.read(size)
        finally:
            body.close()
    if len(data) != size:
        raise OSError(f"{len(data)} of {size} bytes at offset {start}")
    return data


def read_text(location: str) -> bytes:
    if not is_remote(location):
        return Path(location).read_bytes()
    for tries in range(RETRIES):
        try:
            body = _body(location, 0, None)
            try:
                return body.read(-1)
            finally:
                body.close()
        except FileNotFoundError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            if tries == RETRIES - 1:
                raise ShardError(f"data.path={location!r}: unreadable ({exc})") from None
            time.sleep(BACKOFF * 2 ** tries)
    raise AssertionError("unreachable")


def _local_span(shard: Shard, first: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """Samples ``first..stop-1`` of a local shard, cut out of reads of at most ~CHUNK bytes of their
    span into one buffer used again for each read: a new buffer per read is a new mapping of CHUNK
    bytes that the kernel faults in page by page, which made reading from shards twice as slow as
    reading the same images' files (BENCHMARKS.md)."""
    buffer = bytearray(CHUNK)
    with open(shard.tar, "rb") as f:
        j = first
        while j < stop:
            begin = int(shard.offsets[j])
            last = j  # the samples of this read: as many whole ones as fit CHUNK (at least one)
            while last + 1 < stop and shard.offsets[last + 1] + shard.sizes[last + 1] - begin <= CHUNK:
                last += 1
            length = int(shard.offsets[last] + shard.sizes[last]) - begin
            if length > len(buffer):  # one sample larger than CHUNK
                buffer = bytearray(length)
            with memoryview(buffer)[:length] as span:
                got = os.preadv(f.fileno(), [span], begin)
                if got != length:
                    raise OSError(f"{shard.tar}: {got} of {length} bytes at offset {begin}")
                for k in range(j, last + 1):
                    at = int(shard.offsets[k]) - begin
                    yield k, bytes(span[at:at + int(shard.sizes[k])])
            j = last + 1


def _remote_span(shard: Shard, first: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """One Range request for the span, read sample by sample; after a failure the request is
    made again from the sample where it stopped."""
    j, tries = first, 0
    while j < stop:
        body = None
        try:
            body = _body(shard.tar, int(shard.offsets[j]), int(shard.offsets[stop - 1] + shard.sizes[stop - 1]))
            at = int(shard.offsets[j])
            while j < stop:
                gap = int(shard.offsets[j]) - at  # the tar headers between two images
                body.skip(gap)
                size = int(shard.sizes[j])
                data = body.read(size)
                if len(data) != size:
                    raise OSError("connection closed mid-sample")
                at += gap + size
                yield j, data
                j, tries = j + 1, 0
        except (OSError, http.client.HTTPException) as exc:
            tries += 1
            if tries >= RETRIES:
                raise ShardError(f"{shard.tar}: unreadable after {RETRIES} tries ({exc})") from None
            time.sleep(BACKOFF * 2 ** (tries - 1))
        finally:  # also when the reader stops early: a half-read body must not stay on the connection
            if body is not None:
                body.close()


def iter_span(shard: Shard, first: int, stop: int) -> Iterator[tuple[int, bytes | None]]:
    """(j, image bytes) for samples ``first..stop-1`` of ``shard``, read in order; a remote shard
    that stays unreadable gives (j, None) for each sample it could not give, after one warning."""
    if not is_remote(shard.tar):
        yield from _local_span(shard, first, stop)
        return
    done = first
    try:
        for j, data in _remote_span(shard, first, stop):
            done = j + 1
            yield j, data
    except ShardError as exc:
        print(f"warning: {exc}; its {stop - done} remaining samples are skipped", file=sys.stderr, flush=True)
        for j in range(done, stop):
            yield j, None


# ---- the index ----

def _shard(root: str, entry: dict) -> Shard:
    return Shard(_join(root, entry["tar"]), _join(root, entry["idx"]), np.asarray(entry["offsets"], np.int64),
                 np.asarray(entry["sizes"], np.int64), np.asarray(entry["labels"], np.int64))


def load_index(root: str) -> tuple[dict, str]:
    """The index of the packed dataset at ``root`` and its digest; one-line errors for anything else."""
    location = _join(root, INDEX)
    try:
        raw = read_text(location)
    except FileNotFoundError:
        raise ShardError(f"data.path={root!r}: no {INDEX}; pack a dataset with `sslight pack SRC {root}`") from None
    try:
        index = json.loads(raw)
    except ValueError:
        raise ShardError(f"data.path={root!r}: {INDEX} is not JSON") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ShardError(f"data.path={root!r}: {INDEX} is not an sslight pack (format {FORMAT!r})")
    if index.get("version") != VERSION:
        raise ShardError(f"data.path={root!r}: pack version {index.get('version')!r}; this sslight reads "
                         f"version {VERSION}: pack the dataset again")
    if not index.get("complete"):
        raise ShardError(f"data.path={root!r}: packing did not finish; run the same `sslight pack` again to "
                         "complete it")
    return index, hashlib.sha1(raw).hexdigest()


def load_split(root: str, index: dict, digest: str, name: str) -> ShardedSplit:
    shards = [_shard(root, entry) for entry in index["splits"][name]["shards"]]
    return ShardedSplit(root.rstrip("/") if is_remote(root) else str(Path(root).resolve()), name, shards,
                        f"{digest}:{name}")


def common_size(index: dict) -> int | None:
    """The side of the training images when all are the same square size (from the packed
    statistics), else None."""
    stats = index["splits"].get("train", {}).get("image_size")
    if not stats:
        return None
    widths, heights = stats["width"], stats["height"]
    if widths[0] == widths[-1] == heights[0] == heights[-1]:
        return int(widths[0])
    return None
