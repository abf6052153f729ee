"""The epoch order of a packed dataset, and the readers that follow it.

Each epoch the shards are put in an order drawn from (seed, epoch); their samples, shard after
shard, make one sequence, cut into ``world x streams`` contiguous pieces of equal length (the
remainder of the division is left out of the epoch). Rank r reads pieces r*streams ..
(r+1)*streams - 1, one per DataLoader worker: ranks and workers read disjoint samples, each piece
is one or two runs of consecutive samples of a shard or two, and every rank takes the same number
of steps. Within a piece the samples pass through a shuffle buffer of ``SHUFFLE_BUFFER`` samples,
also drawn from (seed, epoch, piece): a sample leaves the buffer at most that many samples after
it was read.

All of it is computed from the index alone, so the rank's batches are known in advance: batch b
is batch b // streams of piece b % streams, and a run resumed mid-epoch asks for the same batches
from where it stopped (the trainer's position is the epoch and the batches done). The
DataLoader gives batch b to its workers in turn, so a worker receives the batches of one piece.

A worker reads its piece in one of two ways. Over a network (:class:`_StreamReader`) it streams
the piece's runs in order (one Range request per run) and holds the samples read ahead of their
turn, at most the shuffle buffer's worth (about 110 MB of ImageNet JPEGs). From a local file
(:class:`_LocalReader`) it asks the kernel to read the piece ahead into the page cache, a buffer's
worth at a time (``posix_fadvise``: the disk still sees long sequential reads), and reads each
sample with one ``pread`` at its turn: it holds no samples, and reads the sample bytes of
ImageNet-sized images in about 0.8x the time a folder's files take (BENCHMARKS.md).
"""

from __future__ import annotations

import bisect
import os
import sys
import weakref
from dataclasses import dataclass

import numpy as np

from loaders.shards import ShardedSplit, ShardError, iter_span

SHUFFLE_BUFFER = 1024  # samples per piece: ~110 MB of ImageNet JPEGs, read ahead of their turn


def shard_permutation(n_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The order an epoch reads the shards in, on every rank and with every backend."""
    return np.random.default_rng([seed, epoch, 0x5A4D]).permutation(n_shards)


def buffer_shuffle(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer of ``buffer`` items emits positions 0..n-1 read in order:
    output position t was read at input position < t + buffer.

    The buffer starts full (positions 0..size-1); step t empties slot ``picks[t]`` and puts
    position size + t in it. So step t emits what its slot took at the slot's previous step, or
    the slot's first position; the slots' last positions leave in a random order at the end.
    Computed from the sorted picks, not step by step: 24 ms per 200,000 positions here, where a
    Python loop took 46-52 ms (best of 7 each)."""
    size = min(buffer, n)
    if size == 0:
        return np.zeros(0, np.int64)
    picks = rng.integers(0, size, size=n - size)
    steps = np.argsort(picks, kind="stable")  # each slot's steps together, in time order
    follows = picks[steps[1:]] == picks[steps[:-1]]  # steps[i + 1] is its slot's next step after steps[i]
    previous = np.full(n - size, -1)
    previous[steps[1:][follows]] = steps[:-1][follows]
    emitted = np.where(previous >= 0, size + previous, picks)
    is_last = np.ones(len(steps), bool)  # each picked slot's last step
    is_last[:-1] = ~follows
    held = np.arange(size)
    held[picks[steps[is_last]]] = size + steps[is_last]
    return np.concatenate([emitted, held[rng.permutation(size)]]).astype(np.int64)


class Runs:
    """Where a sample lies among disjoint runs of consecutive sample indices, each run owned by a
    piece and starting at a read position in it: a bisection over the few runs, where a dict of
    every sample cost a tenth of a second per 100,000 samples at the start of each epoch."""

    def __init__(self, runs: list[tuple[int, int, int, int]]):  # (first sample, length, owner, position)
        self.runs = sorted(runs)
        self.firsts = [first for first, *_ in self.runs]

    def find(self, index: int) -> tuple[int, int]:
        """(owner, read position) of sample ``index``; KeyError for a sample of no run."""
        k = bisect.bisect_right(self.firsts, index) - 1
        if k >= 0:
            first, length, owner, position = self.runs[k]
            if index < first + length:
                return owner, position + index - first
        raise KeyError(index)


@dataclass
class Piece:
    """One rank-and-worker's samples of an epoch."""

    segments: list[tuple[int, int, int]]  # (shard, first, stop) runs in read order
    runs: Runs  # sample -> read position
    inputs: np.ndarray  # sample indices in read order
    order: np.ndarray  # sample indices in the order batches take them
    first_input: np.ndarray  # first_input[q]: the earliest read position any of order[q:] needs
    turn_at: np.ndarray  # turn_at[p]: the position in ``order`` of the sample read at position p

    def position(self, index: int) -> int:
        return self.runs.find(index)[1]


class ShardPlan:
    """Pieces and batches of every epoch for one rank (see the module's docstring). A piece is
    shuffled when first asked for, so that a worker, which reads one, shuffles that one alone."""

    def __init__(self, split: ShardedSplit, seed: int, rank: int, world: int, streams: int,
                 buffer: int = SHUFFLE_BUFFER):
        self.counts = np.diff(split.starts)
        self.starts = split.starts[:-1]
        self.seed, self.rank, self.world, self.streams, self.buffer = seed, rank, world, max(1, streams), buffer
        self.length = len(split) // (world * self.streams)  # samples per piece
        self._pieces: dict[tuple[int, int], Piece] = {}  # of one epoch, the latest asked for
        self._owners: tuple[int, Runs] | None = None

    def piece(self, epoch: int, worker: int) -> Piece:
        if (epoch, worker) not in self._pieces:
            if any(e != epoch for e, _ in self._pieces):
                self._pieces.clear()
            self._pieces[(epoch, worker)] = self._piece(epoch, worker)
        return self._pieces[(epoch, worker)]

    def owners(self, epoch: int) -> Runs:
        """The epoch's samples of this rank -> (worker, read position in its piece)."""
        if self._owners is None or self._owners[0] != epoch:
            self._owners = (epoch, Runs([run for w in range(self.streams)
                                         for run in self._runs(self._segments(epoch, w), w)]))
        return self._owners[1]

    def _segments(self, epoch: int, worker: int) -> list[tuple[int, int, int]]:
        shard_order = shard_permutation(len(self.counts), self.seed, epoch)
        begin = (self.rank * self.streams + worker) * self.length
        end = begin + self.length
        segments, at = [], 0
        for s in shard_order:  # the runs of the epoch's sequence inside [begin, end)
            n = int(self.counts[s])
            first, stop = max(begin - at, 0), min(end - at, n)
            if first < stop:
                segments.append((int(s), first, stop))
            at += n
            if at >= end:
                break
        return segments

    def _runs(self, segments: list[tuple[int, int, int]], worker: int) -> list[tuple[int, int, int, int]]:
        runs, position = [], 0
        for s, first, stop in segments:
            runs.append((int(self.starts[s]) + first, stop - first, worker, position))
            position += stop - first
        return runs

    def _piece(self, epoch: int, worker: int) -> Piece:
        segments = self._segments(epoch, worker)
        inputs = np.concatenate([self.starts[s] + np.arange(a, b) for s, a, b in segments]) if segments \
            else np.zeros(0, np.int64)
        begin = (self.rank * self.streams + worker) * self.length
        shuffled = buffer_shuffle(len(inputs), self.buffer, np.random.default_rng([self.seed, epoch, begin, 0xB0F]))
        first_input = np.minimum.accumulate(shuffled[::-1])[::-1] if len(shuffled) else shuffled
        turn_at = np.empty_like(shuffled)
        turn_at[shuffled] = np.arange(len(shuffled))
        return Piece(segments, Runs(self._runs(segments, worker)), inputs, inputs[shuffled], first_input, turn_at)

    def batches_per_piece(self, batch_size: int) -> int:
        return self.length // batch_size

    def batch(self, epoch: int, b: int, batch_size: int) -> np.ndarray:
        piece = self.piece(epoch, b % self.streams)
        t = b // self.streams
        return piece.order[t * batch_size:(t + 1) * batch_size]


class ShardBatchSampler:
    """:class:`loaders.sampler.EpochBatchSampler`'s interface over a :class:`ShardPlan`."""

    def __init__(self, plan: ShardPlan, batch_size: int):
        if plan.length < batch_size:
            raise ValueError(f"train.batch_size={batch_size}: larger than the {plan.length} images each of the "
                             f"{plan.world * plan.streams} loader streams reads ({plan.world} processes x "
                             f"{plan.streams} workers); use a smaller batch or fewer data.workers")
        self.plan, self.batch_size = plan, batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def batches_per_epoch(self) -> int:
        return self.plan.streams * self.plan.batches_per_piece(self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.skip

    def __iter__(self):
        for b in range(self.skip, self.batches_per_epoch()):
            yield [(self.epoch, int(i)) for i in self.plan.batch(self.epoch, b, self.batch_size)]


def _close_all(fds: dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


class _LocalReader:
    """One piece of a local pack: each sample read alone at its turn, the kernel asked to read the
    piece ahead of the turns into the page cache (see the module's docstring)."""

    def __init__(self, split: ShardedSplit, piece: Piece, window: int):
        self.split, self.piece, self.window = split, piece, window
        runs = [(s, split.shards[s].offsets[a:b], split.shards[s].sizes[a:b]) for s, a, b in piece.segments]
        self.shard = np.concatenate([np.full(len(o), s) for s, o, _ in runs]) if runs else np.zeros(0, np.int64)
        self.offsets = np.concatenate([o for _, o, _ in runs]) if runs else np.zeros(0, np.int64)
        self.sizes = np.concatenate([n for _, _, n in runs]) if runs else np.zeros(0, np.int64)
        self.run_starts = np.cumsum([0] + [len(o) for _, o, _ in runs])  # read position of each run
        self.advised = 0  # read positions [0, advised) were asked for
        self.fds: dict[int, int] = {}  # shard -> its open file, closed with the reader
        weakref.finalize(self, _close_all, self.fds)

    def _fd(self, s: int) -> int:
        if s not in self.fds:
            self.fds[s] = os.open(self.split.shards[s].tar, os.O_RDONLY)
        return self.fds[s]

    def _advise(self, turn: int) -> None:
        """Read positions up to ``turn + 2 x window`` asked for, a window at a time, so that the
        samples of the turns to come are in the page cache before they are read."""
        if turn + self.window <= self.advised or not hasattr(os, "posix_fadvise"):  # none on macOS
            return
        begin = max(self.advised, int(self.piece.first_input[turn]))
        end = min(len(self.offsets), turn + 2 * self.window)
        for first, stop in zip(self.run_starts[:-1], self.run_starts[1:]):  # one request per run
            a, b = max(begin, first), min(end, stop)
            if a < b:
                os.posix_fadvise(self._fd(int(self.shard[a])), int(self.offsets[a]),
                                 int(self.offsets[b - 1] + self.sizes[b - 1] - self.offsets[a]), os.POSIX_FADV_WILLNEED)
        self.advised = max(self.advised, end)

    def read(self, index: int) -> bytes:
        p = self.piece.position(index)
        self._advise(int(self.piece.turn_at[p]))
        s, start, size = int(self.shard[p]), int(self.offsets[p]), int(self.sizes[p])
        try:
            data = os.pread(self._fd(s), size, start)
            if len(data) != size:
                raise OSError(f"{len(data)} of {size} bytes at offset {start}")
        except OSError as exc:
            raise ShardError(f"{self.split.shards[s].tar}: sample {index} unreadable ({exc})") from None
        return data


class _StreamReader:
    """One piece of a remote pack, read sequentially: its samples handed out in the plan's order,
    those read ahead of their turn held (at most the shuffle buffer's worth)."""

    def __init__(self, split: ShardedSplit, piece: Piece):
        self.split, self.piece = split, piece
        self.ahead: dict[int, bytes | None] = {}
        self.stream, self.next_position = None, len(piece.inputs)
        self.last_good: bytes | None = None
        self.skipped = 0

    def _open(self, position: int) -> None:
        def samples():
            at = 0
            for s, first, stop in self.piece.segments:
                if at + stop - first > position:
                    start = first + max(0, position - at)
                    base = int(self.split.starts[s])
                    for j, data in iter_span(self.split.shards[s], start, stop):
                        yield base + j, data
                at += stop - first
        self.stream, self.next_position = samples(), position

    def _advance(self, wanted_turn: int) -> tuple[int, bytes | None] | None:
        for index, data in self.stream:
            position, self.next_position = self.next_position, self.next_position + 1
            if self.piece.turn_at[position] >= wanted_turn:  # earlier turns were served before a resume
                return index, data
        return None

    def read(self, index: int) -> bytes:
        position = self.piece.position(index)
        turn = int(self.piece.turn_at[position])
        if index not in self.ahead:
            if self.stream is None or position < self.next_position:
                self._open(int(self.piece.first_input[turn]))  # first use, or asked out of order
                self.ahead.clear()
            while index not in self.ahead:
                got = self._advance(turn)
                if got is None:
                    raise ShardError(f"{self.split.root}: sample {index} not found where the index puts it")
                self.ahead[got[0]] = got[1]
        data = self.ahead.pop(index)
        if data is None:
            return self._substitute(index, turn)
        self.last_good = data
        return data

    def _substitute(self, index: int, turn: int) -> bytes:
        """A sample of an unreadable shard: the last good sample of this piece stands in, so that
        the batch keeps its size and every rank its step count."""
        self.skipped += 1
        if self.last_good is None:
            while True:
                got = self._advance(turn)
                if got is None:
                    raise ShardError(f"{self.split.root}: every shard of a loader stream is unreadable")
                self.ahead[got[0]] = got[1]
                if got[1] is not None:
                    self.last_good = got[1]
                    break
        if self.skipped == 1:
            print(f"warning: samples of unreadable shards are replaced by other samples of their stream "
                  f"(first: sample {index})", file=sys.stderr, flush=True)
        return self.last_good


class ShardCursor:
    """``read(epoch, index)`` for the batches of a :class:`ShardPlan`, in a DataLoader worker (or the
    main process), by the reader of the piece the sample belongs to."""

    def __init__(self, split: ShardedSplit, plan: ShardPlan):
        self.split, self.plan = split, plan
        self.readers: dict[tuple[int, int], _LocalReader | _StreamReader] = {}

    def read(self, epoch: int, index: int) -> bytes:
        w, _ = self.plan.owners(epoch).find(index)
        if (epoch, w) not in self.readers:
            self.readers = {k: r for k, r in self.readers.items() if k[0] == epoch}  # the last epoch's closed
            piece = self.plan.piece(epoch, w)
            self.readers[(epoch, w)] = _LocalReader(self.split, piece, self.plan.buffer) if self.split.local \
                else _StreamReader(self.split, piece)
        return self.readers[(epoch, w)].read(index)
