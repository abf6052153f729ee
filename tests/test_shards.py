"""Packed datasets: the epoch order (disjoint, equal, bounded shuffle, reproducible), reading shards
from disk and from a real HTTP server on the loopback, including one that drops connections."""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from loaders.batch import ViewGroup
from loaders.datasets import load_dataset
from loaders.registry import build_loader
from loaders.shard_order import ShardBatchSampler, ShardCursor, ShardPlan, _StreamReader, buffer_shuffle
from loaders.shards import Shard, ShardedSplit

GROUPS = [ViewGroup(2, 32, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(2, 16, (0.05, 0.3), (3 / 4, 4 / 3))]


def synthetic_split(counts: list[int]) -> ShardedSplit:
    shards = [Shard(f"/nowhere/{s:06d}.tar", "", np.arange(n, dtype=np.int64) * 1024, np.full(n, 100, np.int64),
                    np.zeros(n, np.int64)) for s, n in enumerate(counts)]
    return ShardedSplit("/nowhere", "train", shards, "k")


def pieces(plan: ShardPlan, epoch: int) -> list:
    return [plan.piece(epoch, w) for w in range(plan.streams)]


def test_buffer_shuffle_is_a_permutation_within_its_buffer():
    order = buffer_shuffle(5000, 64, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(5000))
    assert (order < np.arange(5000) + 64).all()  # output t was read before input t + buffer
    assert (order != np.arange(5000)).mean() > 0.9


@pytest.mark.parametrize("n, buffer", [(0, 16), (5, 16), (16, 16), (17, 16), (3000, 64), (500, 1)])
def test_buffer_shuffle_equals_a_buffer_filled_and_emptied_step_by_step(n, buffer):
    held, out = list(range(min(buffer, n))), []
    rng = np.random.default_rng(n)
    picks = rng.integers(0, len(held), size=n - len(held)) if held else ()
    for incoming, pick in zip(range(len(held), n), picks):
        out.append(held[pick])
        held[pick] = incoming
    out.extend(held[i] for i in rng.permutation(len(held)))
    assert buffer_shuffle(n, buffer, np.random.default_rng(n)).tolist() == out


def test_pieces_are_disjoint_equal_and_cover_the_epoch():
    split = synthetic_split([97, 130, 64, 200, 55, 81, 120])
    world, workers, batch = 2, 3, 8
    samplers = [ShardBatchSampler(ShardPlan(split, 5, rank, world, workers, buffer=32), batch) for rank in range(world)]
    seen = []
    for sampler in samplers:
        sampler.set_epoch(0)
        batches = list(sampler)
        assert len(batches) == sampler.batches_per_epoch() == workers * ((len(split) // (world * workers)) // batch)
        assert all(len(b) == batch for b in batches)
        seen.append([i for b in batches for _, i in b])
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0])) == len(seen[0])
    for rank in range(world):  # a piece is a few runs of consecutive samples
        for piece in pieces(ShardPlan(split, 5, rank, world, workers), 0):
            assert len(piece.segments) <= 3
            runs = np.diff(piece.inputs) != 1
            assert runs.sum() <= len(piece.segments) - 1


def test_each_sample_is_found_at_its_read_position_and_turn():
    """The lookups the readers use (a bisection over a piece's runs) agree with the plan's arrays;
    a sample of another rank is no one's."""
    split = synthetic_split([97, 130, 64, 200, 55, 81, 120])
    plan = ShardPlan(split, 5, 1, 2, 3, buffer=32)
    owners, mine = plan.owners(0), set()
    for w, piece in enumerate(pieces(plan, 0)):
        for p, i in enumerate(piece.inputs.tolist()):
            assert piece.position(i) == p and owners.find(i) == (w, p)
        assert (piece.order[piece.turn_at] == piece.inputs).all()
        mine |= set(piece.inputs.tolist())
    for i in sorted(set(range(len(split))) - mine):
        with pytest.raises(KeyError):
            owners.find(i)


def test_each_epoch_reorders_the_shards_and_the_same_seed_repeats_it():
    split = synthetic_split([50] * 12)
    plan = ShardPlan(split, 0, 0, 1, 2)
    first = [p.segments for p in pieces(plan, 0)]
    assert first == [p.segments for p in pieces(ShardPlan(split, 0, 0, 1, 2), 0)]
    assert first != [p.segments for p in pieces(plan, 1)]
    assert first != [p.segments for p in pieces(ShardPlan(split, 1, 0, 1, 2), 0)]


def test_a_batch_larger_than_a_stream_is_refused_in_one_line():
    split = synthetic_split([40])
    with pytest.raises(ValueError, match=r"train\.batch_size=32: larger than the 20 images each of the 2 loader"):
        ShardBatchSampler(ShardPlan(split, 0, 0, 1, 2), 32)


def test_the_cursor_reads_every_batch_as_random_access_does(cifar_packed):
    """Both readers of a piece: a local pack's (one pread per sample at its turn) and a remote
    one's (the piece streamed in order, samples held until their turn), here on the same files."""
    split = load_dataset(str(cifar_packed)).train
    assert len(split.shards) >= 3
    plan = ShardPlan(split, 3, 0, 1, 2, buffer=16)
    sampler, cursor = ShardBatchSampler(plan, 10), ShardCursor(split, plan)
    sampler.set_epoch(1)
    batches = list(sampler)
    streams = [_StreamReader(split, piece) for piece in pieces(plan, 1)]
    for b, batch in enumerate(batches):
        for epoch, index in batch:
            assert cursor.read(epoch, index) == split.read(index) == streams[b % 2].read(index)
    sampler.set_epoch(1, 3)  # a resumed epoch: the same batches from the fourth on
    assert list(sampler) == batches[3:]
    fresh = ShardCursor(split, plan)
    assert [fresh.read(e, i) for e, i in batches[3]] == [split.read(i) for _, i in batches[3]]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts this process's files in /proc")
def test_a_local_reader_closes_its_shards_when_its_epoch_ends(cifar_packed):
    def open_files():
        return len(os.listdir("/proc/self/fd"))

    split = load_dataset(str(cifar_packed)).train
    plan = ShardPlan(split, 0, 0, 1, 1, buffer=16)
    sampler, cursor = ShardBatchSampler(plan, 10), ShardCursor(split, plan)
    before = open_files()
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for e, i in batch:
                cursor.read(e, i)
        assert before < open_files() <= before + len(split.shards)  # this epoch's; the last one's closed
    del cursor
    assert open_files() == before


@pytest.mark.parametrize("chunk", [300, 5000])
def test_a_span_read_in_chunks_gives_each_sample_whole(cifar_packed, monkeypatch, chunk):
    """Reads of a few samples at a time into one reused buffer (5000 bytes: about five CIFAR JPEGs),
    and samples larger than a read (300 bytes), which grow it."""
    from loaders import shards
    split = load_dataset(str(cifar_packed)).train
    monkeypatch.setattr(shards, "CHUNK", chunk)
    shard = split.shards[1]
    assert shard.sizes.min() > 300 and shard.sizes[:10].sum() > 5000
    start = int(split.starts[1])
    got = list(shards.iter_span(shard, 3, len(shard.sizes)))
    assert [j for j, _ in got] == list(range(3, len(shard.sizes)))
    assert all(data == split.read(start + j) for j, data in got)


def test_pack_trains_with_pil_and_nvjpeg_in_workers(cifar_packed):
    dataset = load_dataset(str(cifar_packed))
    assert dataset.classes and len(dataset.train) == 200 and len(dataset.test) == 100
    labels = dataset.train.labels
    for name in ("pil", "nvjpeg"):
        loader = build_loader(name, dataset.train, GROUPS, 16, 0, torch.device("cpu"), 2)
        seen = []
        for batch in loader.epoch(0):
            assert [v.shape for v in batch.views] == [(2, 16, 3, 32, 32), (2, 16, 3, 16, 16)]
            assert batch.views[0].dtype == torch.uint8
            assert batch.labels.tolist() == [labels[i] for i in batch.indices.tolist()]
            seen += batch.indices.tolist()
        assert len(seen) == len(set(seen)) == loader.batches_per_epoch() * 16 == 192


# ---- over HTTP: a real server on the loopback ----

class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server with Range requests (which it lacks), and faults on demand: the first
    request for each tar is cut after ``cut`` bytes (``cut``: the server's attribute)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        self.server.requested.append(path.name)
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        if path.name in self.server.broken:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:100])  # and the connection ends: every try fails
            self.close_connection = True
            return
        start, stop = 0, len(data)
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            start = int(wanted.group(1))
            stop = int(wanted.group(2)) + 1 if wanted.group(2) else len(data)
        body = data[start:stop]
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Length", str(len(body)))
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.end_headers()
        if path.suffix == ".tar" and self.server.cut and path.name not in self.server.cut_done:
            self.server.cut_done.add(path.name)
            self.wfile.write(body[:self.server.cut])
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def http_server():
    """``start(root, cut=0, broken=())``: a :class:`RangeHandler` server of ``root`` on 127.0.0.1
    (the first request for each tar cut after ``cut`` bytes; ``broken`` tars never served whole),
    its address in ``.url`` and the names of the files asked for, in order, in ``.requested``."""
    servers = []

    def start(root: Path, cut: int = 0, broken=()) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root)))
        server.cut, server.cut_done, server.broken, server.requested = cut, set(), set(broken), []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        server.url = f"http://127.0.0.1:{server.server_address[1]}/"
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def epoch_bytes(dataset, workers: int) -> list[tuple[list[int], torch.Tensor]]:
    loader = build_loader("pil", dataset.train, GROUPS, 16, 0, torch.device("cpu"), workers)
    return [(b.indices.tolist(), b.views[0]) for b in loader.epoch(0)]


def test_shards_over_http_give_the_batches_of_the_local_pack(cifar_packed, http_server):
    url = http_server(cifar_packed).url
    remote = load_dataset(url)
    assert not remote.train.local and len(remote.train) == 200 and remote.classes
    local = epoch_bytes(load_dataset(str(cifar_packed)), 2)
    got = epoch_bytes(remote, 2)
    assert [i for i, _ in got] == [i for i, _ in local]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, local))
    assert remote.test.read(7) == load_dataset(str(cifar_packed)).test.read(7)  # random access, as eval reads


def test_a_server_that_drops_connections_mid_shard_does_not_stop_the_run(cifar_packed, http_server):
    url = http_server(cifar_packed, cut=3000).url  # every tar's first request ends after 3000 bytes
    local = epoch_bytes(load_dataset(str(cifar_packed)), 0)
    got = epoch_bytes(load_dataset(url), 0)
    assert [i for i, _ in got] == [i for i, _ in local]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, local))


def test_a_shard_that_stays_unreadable_is_skipped_with_one_warning(cifar_packed, http_server, capfd, monkeypatch):
    monkeypatch.setattr("loaders.shards.BACKOFF", 0.01)
    url = http_server(cifar_packed, broken={"000001.tar"}).url
    local = epoch_bytes(load_dataset(str(cifar_packed)), 0)
    got = epoch_bytes(load_dataset(url), 0)
    assert [i for i, _ in got] == [i for i, _ in local]  # every step is still taken, at full batch size
    err = capfd.readouterr().err
    assert err.count("000001.tar: unreadable after 5 tries") == 1
    assert "remaining samples are skipped" in err
    assert err.count("replaced by other samples") == 1


def test_any_url_fsspec_opens_is_read_through_it(cifar_packed):
    url = Path(cifar_packed).resolve().as_uri()  # file://...: fsspec's local filesystem
    remote, local = load_dataset(url), load_dataset(str(cifar_packed))
    assert not remote.train.local and remote.classes == local.classes
    assert remote.train.read(5) == local.train.read(5)
    assert [i for i, _ in epoch_bytes(remote, 0)] == [i for i, _ in epoch_bytes(local, 0)]


def test_a_url_without_a_pack_says_so_in_one_line(tmp_path, http_server):
    from loaders.datasets import DataError

    url = http_server(tmp_path).url
    with pytest.raises(DataError, match=r"no index\.json; pack a dataset with `sslight pack SRC"):
        load_dataset(url)


def test_a_packed_label_subset_is_fixed_in_a_file_and_read_back(cifar_packed):
    from sslight.eval.features import EvalImages
    from sslight.eval.subsets import label_subset

    dataset = load_dataset(str(cifar_packed))
    subset, path = label_subset(dataset, 10, 0)
    assert len(subset) == 20 and sorted(set(subset.labels)) == list(range(10))
    assert all(subset.labels.count(c) == 2 for c in range(10))
    again, _ = label_subset(dataset, 10, 0)
    assert again.indices == subset.indices
    image, label = EvalImages(subset, 32)[3]
    assert image.shape == (3, 32, 32) and label == dataset.train.labels[subset.indices[3]]
    path.write_text(path.read_text().replace(":0000", ":9999", 1))
    from loaders.datasets import DataError
    with pytest.raises(DataError, match="is not in the packed dataset; delete the file to redraw"):
        label_subset(dataset, 10, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("overlap", [False, True])
def test_a_pack_on_cuda_gives_the_cpu_batches(cifar_packed, overlap):
    """nvJPEG on the GPU from the workers' shard bytes: the same samples in the same order as the
    CPU path, the same views within decoder rounding."""
    dataset = load_dataset(str(cifar_packed))
    cpu = build_loader("nvjpeg", dataset.train, GROUPS, 16, 0, torch.device("cpu"), 2)
    cuda = build_loader("nvjpeg", dataset.train, GROUPS, 16, 0, torch.device("cuda"), 2, overlap=overlap)
    for a, b in zip(cpu.epoch(1), cuda.epoch(1), strict=True):
        assert b.views[0].is_cuda and torch.equal(a.indices, b.indices.cpu())
        for va, vb in zip(a.views, b.views):
            assert (va.float() - vb.cpu().float()).abs().mean() < 2.0


def test_a_class_sorted_folder_packs_into_batches_of_many_classes(cifar_packed):
    """An ImageFolder lists class after class; the pack stores a fixed random order, so a batch
    from a bounded shuffle buffer still mixes the classes."""
    dataset = load_dataset(str(cifar_packed))
    loader = build_loader("pil", dataset.train, GROUPS, 16, 0, torch.device("cpu"), 0)
    for batch in loader.epoch(0):
        assert len(set(batch.labels.tolist())) >= 5


def test_evaluation_leaves_out_an_unreadable_shard_with_one_warning(cifar_packed, http_server, capfd, monkeypatch):
    from sslight.eval.features import extract

    monkeypatch.setattr("loaders.shards.BACKOFF", 0.01)
    dataset = load_dataset(http_server(cifar_packed, broken={"000001.tar"}).url)
    test = dataset.test
    lost = len(test.shards[1])
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    feats, labels = extract(backbone, test, 32, torch.device("cpu"), torch.float32, 0, batch=16)
    assert feats.shape == (len(test) - lost, 4)
    kept = [i for i in range(len(test)) if test.locate(i)[0] != 1]
    assert labels.tolist() == [test.labels[i] for i in kept]
    err = capfd.readouterr().err
    assert err.count("000001.tar: unreadable after 5 tries") == 1 and "its samples are left out" in err


def test_evaluation_reads_a_batch_over_http_in_one_request_per_shard_it_spans(cifar_packed, http_server):
    """Features over HTTP equal those from disk, from one Range request per run of a batch's
    samples in a shard: a batch spans one or two shards, so a few requests, not one per image."""
    from sslight.eval.features import extract

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    local = load_dataset(str(cifar_packed)).test
    server = http_server(cifar_packed)
    remote = load_dataset(server.url).test
    del server.requested[:]  # the index
    batch = 16
    feats, labels = extract(backbone, remote, 32, torch.device("cpu"), torch.float32, 0, batch=batch)
    expected, expected_labels = extract(backbone, local, 32, torch.device("cpu"), torch.float32, 0, batch=batch)
    assert torch.equal(feats, expected) and torch.equal(labels, expected_labels)
    tars = [name for name in server.requested if name.endswith(".tar")]
    batches = -(-len(remote) // batch)
    assert len(remote.shards) >= 2 and batches <= len(tars) <= batches + len(remote.shards) - 1
