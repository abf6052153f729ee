"""The overlap of decode and training: the prefetching path yields exactly the batches of the serial
path, driven here through nvjpeg's main-process (GPU-style) decode on a CPU device."""

import itertools

import pytest
import torch

from loaders import prefetch
from loaders.batch import ViewGroup
from loaders.datasets import discover
from loaders.nvjpeg import NvjpegLoader
from loaders.prefetch import Prefetched
from loaders.registry import build_loader

GROUPS = [ViewGroup(2, 32, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 18, (0.05, 0.3), (3 / 4, 4 / 3))]
CPU = torch.device("cpu")


def batches(loader, epoch, skip=0, limit=None):
    return list(itertools.islice(loader.epoch(epoch, skip), limit))


def assert_same(a, b):
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert torch.equal(x.indices, y.indices) and torch.equal(x.labels, y.labels)
        assert all(torch.equal(u, v) for u, v in zip(x.views, y.views))


@pytest.fixture(scope="module")
def split(cifar_small):
    return discover(cifar_small).train.subset(64, 0)


def test_prefetched_batches_equal_the_serial_ones_bit_for_bit(split):
    serial = NvjpegLoader(split, GROUPS, 8, 3, CPU, 2, decode_in_workers=False)
    assert serial.works_in_caller
    ahead = Prefetched(NvjpegLoader(split, GROUPS, 8, 3, CPU, 2, decode_in_workers=False), CPU)
    for epoch, skip in ((0, 0), (1, 0), (1, 5)):  # a resumed epoch starts at batch 5 of 8
        assert_same(batches(ahead, epoch, skip), batches(serial, epoch, skip))
    # and they are the views the workers cut where the workers decode (the CPU default)
    in_workers = NvjpegLoader(split, GROUPS, 8, 3, CPU, 2)
    assert not in_workers.works_in_caller
    assert_same(batches(ahead, 0), batches(in_workers, 0))


def test_the_registry_prefetches_only_loaders_that_work_in_the_caller(split):
    assert not isinstance(build_loader("nvjpeg", split, GROUPS, 8, 0, CPU, 0, overlap=True), Prefetched)
    assert not isinstance(build_loader("pil", split, GROUPS, 8, 0, CPU, 0, overlap=True), Prefetched)


def test_stopping_early_ends_the_thread_and_errors_reach_the_consumer(split):
    ahead = Prefetched(NvjpegLoader(split, GROUPS, 8, 0, CPU, 0, decode_in_workers=False), CPU, depth=2)
    assert len(batches(ahead, 0, limit=2)) == 2  # the generator closes; its thread must end with it
    assert not [t for t in __import__("threading").enumerate() if t.name == "sslight-prefetch"]

    class Failing:
        works_in_caller = True

        def batches_per_epoch(self):
            return 3

        def epoch(self, epoch, skip_batches=0):
            yield from batches(NvjpegLoader(split, GROUPS, 8, 0, CPU, 0, decode_in_workers=False), epoch, limit=1)
            raise OSError("disk went away")

    stream = Prefetched(Failing(), CPU).epoch(0)
    next(stream)
    with pytest.raises(OSError, match="disk went away"):
        next(stream)


def test_one_side_stream_per_loader_whatever_the_epochs(split, monkeypatch):
    """The producer's stream is made once per loader, not per epoch (each stream keeps its own
    cached memory). Off CUDA the factory gives None, but it is called all the same."""
    made, make = [], prefetch.side_stream

    def counted(device):
        made.append(device)
        return make(device)

    monkeypatch.setattr(prefetch, "side_stream", counted)
    ahead = Prefetched(NvjpegLoader(split, GROUPS, 8, 0, CPU, 0, decode_in_workers=False), CPU)
    for epoch in range(3):
        assert len(batches(ahead, epoch, limit=2)) == 2
    assert made == [CPU]
