"""DALI reading packed shards with its own ``readers.webdataset``: the contract, disjoint ranks with
equal steps, reproducible epochs and resume, subsets that cut a shard, and the one-line refusal
of remote shards. The packed dataset is written here in the packed format by hand (tarfile and
DALI's own wds2idx), samples sorted by label as a packed ImageFolder is."""

import io
import json
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from loaders import build_loader, dali
from loaders.batch import ViewGroup, is_channels_last_views
from loaders.shard_order import shard_permutation

pytestmark = pytest.mark.skipif(not dali.available(), reason="dali not installed")

GROUPS = [ViewGroup(2, 24, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(2, 12, (0.05, 0.3), (3 / 4, 4 / 3))]
N, PER_SHARD, CLASSES = 40, 13, 5  # shards of 13, 13, 13 and 1 samples
CPU = torch.device("cpu")


def _member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack_by_hand(dst, n=N, per_shard=PER_SHARD):
    """A packed dataset in the packed format: train/NNNNNN.tar with <key>.jpg or .png, .cls and
    .index members, DALI's index beside each tar (wds2idx), index.json last."""
    from wds2idx import IndexCreator

    rng = np.random.default_rng(0)
    labels = [i * CLASSES // n for i in range(n)]  # sorted by class, as discover lists an ImageFolder
    (dst / "train").mkdir(parents=True)
    shards = []
    for s, first in enumerate(range(0, n, per_shard)):
        tar_path = dst / "train" / f"{s:06d}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(first, min(n, first + per_shard)):
                pixels = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, "PNG" if i % 4 == 0 else "JPEG")
                _member(tar, f"{i:08d}.{'png' if i % 4 == 0 else 'jpg'}", buf.getvalue())
                _member(tar, f"{i:08d}.cls", str(labels[i]).encode())
                _member(tar, f"{i:08d}.index", struct.pack("<q", i))
        with tarfile.open(tar_path) as tar:
            images = [m for m in tar.getmembers() if m.name.endswith((".jpg", ".png"))]
        with IndexCreator(str(tar_path), str(tar_path.with_suffix(".idx")), verbose=False) as creator:
            creator.create_index()
        shards.append({"tar": f"train/{s:06d}.tar", "idx": f"train/{s:06d}.idx", "bytes": tar_path.stat().st_size,
                       "samples": len(images), "offsets": [m.offset_data for m in images],
                       "sizes": [m.size for m in images], "labels": labels[first:first + len(images)]})
    index = {"format": "sslight-shards", "version": 1, "classes": [f"c{k}" for k in range(CLASSES)],
             "source": {"path": "/nowhere", "key": "by-hand"}, "options": {"shard_bytes": 1 << 20, "reencode": None},
             "splits": {"train": {"samples": n, "image_size": {"width": [40, 40, 40], "height": [30, 50, 69]},
                                  "shards": shards}},
             "excluded": {}, "complete": True}
    (dst / "index.json").write_text(json.dumps(index))
    return dst


def train_split(root):
    from loaders.shards import load_index, load_split

    index, digest = load_index(str(root))
    return load_split(str(root), index, digest, "train")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return train_split(pack_by_hand(tmp_path_factory.mktemp("packed")))


def run(split, epoch=0, skip=0, rank=0, world=1, seed=0, batch=4):
    loader = build_loader("dali", split, GROUPS, batch, seed, CPU, 2, rank, world)
    return loader, list(loader.epoch(epoch, skip))


def test_contract_from_shards(packed):
    loader, batches = run(packed, batch=8)
    assert len(batches) == loader.batches_per_epoch() == N // 8
    seen = []
    for batch in batches:
        assert [tuple(v.shape) for v in batch.views] == [(2, 8, 3, 24, 24), (2, 8, 3, 12, 12)]
        assert all(v.dtype == torch.uint8 and is_channels_last_views(v) for v in batch.views)
        assert batch.indices.dtype == torch.int64
        assert batch.labels.tolist() == [packed.labels[i] for i in batch.indices.tolist()]
        seen += batch.indices.tolist()
    assert sorted(seen) == list(range(N))  # every sample once, JPEG and PNG members alike


def test_ranks_disjoint_with_equal_steps(packed):
    for epoch in (0, 1):
        steps, seen = [], []
        for rank in (0, 1):
            loader, batches = run(packed, epoch, rank=rank, world=2, batch=3)
            steps.append(len(batches))
            assert len(batches) == loader.batches_per_epoch() == (N // 2) // 3
            seen.append({i for b in batches for i in b.indices.tolist()})
        assert steps[0] == steps[1]
        assert not seen[0] & seen[1]


def test_epochs_reproducible_and_resume_skips(packed):
    _, first = run(packed, epoch=3, seed=7)
    _, again = run(packed, epoch=3, seed=7)
    _, resumed = run(packed, epoch=3, seed=7, skip=4)
    _, other = run(packed, epoch=4, seed=7)
    assert len(resumed) == len(first) - 4
    for a, b in zip(first, again):
        assert torch.equal(a.indices, b.indices)
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))  # the same views, not just the order
    for a, b in zip(first[4:], resumed):
        assert torch.equal(a.indices, b.indices)
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))
    assert [b.indices.tolist() for b in first] != [b.indices.tolist() for b in other]


def test_epoch_reads_shards_in_a_new_order(packed):
    orders = {tuple(shard_permutation(len(packed.shards), 0, e)) for e in range(8)}
    assert len(orders) > 1  # 4 shards: 24 orders


def test_small_split_shuffles_whole_rank_share(packed):
    """Where a rank's share fits SHUFFLE_BYTES, the buffer holds all of it, so a batch mixes
    classes however the pack sorted them."""
    assert dali.shuffle_buffer(packed, 4, 1) == N and dali.shuffle_buffer(packed, 4, 2) == N // 2
    _, batches = run(packed, batch=8)
    assert sum(len(set(b.labels.tolist())) > 1 for b in batches) >= 4


def test_subset_cuts_a_shard(packed):
    part = packed.subset(20, 0)  # 13 samples, then 7 of the second shard
    loader, batches = run(part, batch=4)
    seen = sorted(i for b in batches for i in b.indices.tolist())
    assert seen == list(range(20)) and len(batches) == loader.batches_per_epoch() == 5


def test_remote_shards_refused_in_one_line(packed):
    from loaders.shards import ShardedSplit

    remote = ShardedSplit("http://127.0.0.1:9/data", "train", packed.shards, "remote")
    with pytest.raises(ValueError, match=r"^data.loader=dali reads local shards only, not http://127.0.0.1:9/data: "
                                         r"data.loader=nvjpeg or pil stream shards over HTTP$"):
        build_loader("dali", remote, GROUPS, 4, 0, CPU, 2)


@pytest.mark.gpu
def test_shards_on_the_gpu(packed):
    """``mixed`` decode (nvJPEG) from the webdataset reader's CPU bytes; labels looked up on the device."""
    cuda = torch.device("cuda")
    loader = build_loader("dali", packed, GROUPS, 8, 0, cuda, 2)
    seen = []
    for batch in loader.epoch(0):
        assert all(v.device.type == "cuda" and is_channels_last_views(v) for v in batch.views)
        assert batch.labels.device.type == batch.indices.device.type == "cuda"
        assert batch.labels.cpu().tolist() == [packed.labels[i] for i in batch.indices.cpu().tolist()]
        seen += batch.indices.cpu().tolist()
    assert sorted(seen) == list(range(N))


def raw_samples(split):
    """(index, image bytes) of every sample as DALI's webdataset reader gives them through the
    split's .idx files, in stored order."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def read():
        image, index = fn.readers.webdataset(
            paths=[s.tar for s in split.shards], index_paths=[s.idx for s in split.shards],
            ext=["jpg;png", "index"], dtypes=[types.UINT8, types.INT64], missing_component_behavior="error")
        return image, index

    pipe = read()
    pipe.build()
    out = []
    for _ in range(len(split)):
        image, index = pipe.run()
        out.append((int(np.asarray(index[0])[0]), np.asarray(image[0]).tobytes()))
    return out


def test_dali_reads_what_loaders_pack_writes(cifar_small, tmp_path):
    """The .idx files of ``loaders.pack`` lead DALI to every sample's image and index members: the
    bytes DALI reads are the image bytes the index.json offsets point at, and the DALI loader
    covers the split once per epoch with the packed labels."""
    from loaders.pack import pack

    pack(str(cifar_small), str(tmp_path / "packed"), shard_bytes=64 << 10, workers=2)
    split = train_split(tmp_path / "packed")
    assert len(split.shards) > 2 and len(split) == 200
    assert raw_samples(split) == [(i, split.read(i)) for i in range(len(split))]
    loader, batches = run(split, batch=20)
    seen = sorted(i for b in batches for i in b.indices.tolist())
    assert seen == list(range(200)) and len(batches) == loader.batches_per_epoch() == 10
    assert all(b.labels.tolist() == [split.labels[i] for i in b.indices.tolist()] for b in batches)
