"""Decode and cut the next batch while the current one trains: a loader whose batches are made in
the process that trains (nvjpeg on CUDA) runs its epoch in a thread, ``depth`` batches ahead.

On CUDA the thread works on a stream of its own, made once per loader (the caching allocator
keeps freed blocks per stream: a new stream each epoch would strand the last one's cached
memory). Each batch is handed over with an event recorded on that stream after its last kernel;
the training stream waits on the event before it touches the batch (no host synchronisation),
and every tensor of the batch is marked as used on the training stream (``record_stream``), so
the caching allocator does not give its memory back to the thread's stream while the step still
reads it. torchvision's nvJPEG decode makes the thread's current stream wait for its own (and
the thread drains that stream before each decode: ``loaders.nvjpeg.decode_jpegs_gpu``), and the
Triton kernel launches on it, so the event covers both.

The batches are those of the loader itself, in its order, for every (epoch, skip): the thread only
moves where they are made (tests/test_prefetch.py compares the two bit for bit).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Iterator

import torch

from loaders.batch import Batch, Loader

_END = object()


def side_stream(device: torch.device) -> torch.cuda.Stream | None:
    """A CUDA stream for the producer thread's work on ``device`` (None off CUDA)."""
    return torch.cuda.Stream(device) if device.type == "cuda" else None


@contextlib.contextmanager
def working_on(stream: torch.cuda.Stream | None):
    """The calling thread's work goes to ``stream`` (and its device); nothing changes for None."""
    if stream is None:
        yield
        return
    with torch.cuda.device(stream.device), torch.cuda.stream(stream):
        yield


class Prefetched:
    """``loader`` with each epoch made ``depth`` batches ahead in a background thread."""

    works_in_caller = False

    def __init__(self, loader: Loader, device: torch.device, depth: int = 1):
        self.loader, self.device, self.depth = loader, device, depth
        self.stream = side_stream(device)

    def batches_per_epoch(self) -> int:
        return self.loader.batches_per_epoch()

    def _produce(self, epoch: int, skip: int, out: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        batches = self.loader.epoch(epoch, skip)
        try:
            with working_on(self.stream):
                for batch in batches:
                    ready = None
                    if self.stream is not None:
                        ready = torch.cuda.Event()
                        ready.record(self.stream)
                    if not put((batch, ready)):
                        return
        except BaseException as exc:  # raised in the consumer, where it belongs
            put(exc)
            return
        finally:
            batches.close()
        put(_END)

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[Batch]:
        out: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(epoch, skip_batches, out, stop),
                                  name="sslight-prefetch", daemon=True)
        thread.start()
        try:
            while (item := out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                batch, ready = item
                if ready is not None:
                    consumer = torch.cuda.current_stream(self.device)
                    consumer.wait_event(ready)
                    for tensor in (*batch.views, batch.labels, batch.indices):
                        tensor.record_stream(consumer)
                yield batch
        finally:  # the consumer stopped early (step limit, signal) or the epoch ended
            stop.set()
            thread.join()
