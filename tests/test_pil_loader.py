"""The reference pil backend and the shared geometry: shapes, crop boxes, flips, determinism."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from loaders import build_loader
from loaders.batch import Batch, ViewGroup
from loaders.datasets import Split, discover
from loaders.geometry import BOX_DRAWS, crop_box, view_params
from loaders.sampler import EpochBatchSampler

GROUPS = [ViewGroup(2, 32, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 18, (0.05, 0.3), (3 / 4, 4 / 3))]


def coordinate_image(path, w, h):
    """Red encodes x, green encodes y (scaled to 0..255), so a crop reveals its box."""
    xs = np.linspace(0, 255, w).round().astype(np.uint8)
    ys = np.linspace(0, 255, h).round().astype(np.uint8)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = xs[None, :]
    arr[..., 1] = ys[:, None]
    Image.fromarray(arr).save(path)


@pytest.mark.parametrize("scale", [(0.3, 1.0), (0.05, 0.3), (0.14, 1.0)])
def test_crop_boxes_respect_scale_and_ratio(scale):
    rng = np.random.default_rng(0)
    for _ in range(2000):
        top, left, h, w = crop_box(rng.random(BOX_DRAWS), 500, 375, scale, (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        # rounding to whole pixels moves area and ratio by at most a pixel's worth
        assert scale[0] * 0.97 <= h * w / (500 * 375) <= scale[1] * 1.03
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03


def test_view_params_keyed_on_seed_epoch_index():
    a = view_params(0, 3, 17, 64, 48, GROUPS)
    assert a == view_params(0, 3, 17, 64, 48, GROUPS)
    assert a != view_params(0, 4, 17, 64, 48, GROUPS)
    assert a != view_params(1, 3, 17, 64, 48, GROUPS)
    flips = [f for i in range(500) for g in view_params(0, 0, i, 64, 48, GROUPS) for *_, f in g]
    assert abs(np.mean(flips) - 0.5) < 0.03


def test_sampler_shards_disjoint_and_cover():
    n, batch = 103, 10
    seen = []
    for rank in range(2):
        s = EpochBatchSampler(n, batch, seed=0, rank=rank, world=2)
        s.set_epoch(1)
        seen.append([i for b in s for _, i in b])
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) == len(seen[1]) == 50
    full = EpochBatchSampler(n, 1, seed=0, rank=0, world=1)
    assert sorted(full.indices(1)) == list(range(n))
    resumed = EpochBatchSampler(n, batch, seed=0)
    resumed.set_epoch(1, skip_batches=3)
    whole = EpochBatchSampler(n, batch, seed=0)
    whole.set_epoch(1)
    assert list(resumed) == list(whole)[3:]


@pytest.fixture
def coordinate_split(tmp_path):
    files = []
    for i, (w, h) in enumerate([(120, 90), (64, 64), (300, 200), (90, 140)] * 4):
        path = tmp_path / f"{i}.png"
        coordinate_image(path, w, h)
        files.append(str(path))
    return Split(files, [0] * len(files))


@pytest.mark.parametrize("workers", [0, 2])
def test_views_shape_dtype_and_worker_independence(coordinate_split, workers):
    loader = build_loader("pil", coordinate_split, GROUPS, 4, 0, torch.device("cpu"), workers)
    batches = list(loader.epoch(0))
    assert len(batches) == loader.batches_per_epoch() == 4
    b = batches[0]
    assert [tuple(v.shape) for v in b.views] == [(2, 4, 3, 32, 32), (6, 4, 3, 18, 18)]
    assert all(v.dtype == torch.uint8 for v in b.views)
    reference = list(build_loader("pil", coordinate_split, GROUPS, 4, 0, torch.device("cpu"), 0).epoch(0))
    for x, y in zip(batches, reference):
        assert torch.equal(x.indices, y.indices)
        assert all(torch.equal(u, v) for u, v in zip(x.views, y.views))


def test_crops_come_from_the_sampled_boxes(coordinate_split):
    """Recover each view's box from the coordinate colours and compare with the sampled one."""
    loader = build_loader("pil", coordinate_split, GROUPS, 4, 0, torch.device("cpu"), 0)
    batch = next(iter(loader.epoch(0)))
    for b, index in enumerate(batch.indices.tolist()):
        with Image.open(coordinate_split.files[index]) as im:
            w, h = im.size
        params = view_params(0, 0, index, w, h, GROUPS)
        for g, group in enumerate(GROUPS):
            for v, (top, left, bh, bw, flip) in enumerate(params[g]):
                view = batch.views[g][v, b].float()
                red = view[0]
                xs = red[:, 0], red[:, -1]
                left_x = (xs[1] if flip else xs[0]).mean() / 255 * (w - 1)
                right_x = (xs[0] if flip else xs[1]).mean() / 255 * (w - 1)
                top_y = view[1][0].mean() / 255 * (h - 1)
                bottom_y = view[1][-1].mean() / 255 * (h - 1)
                tol = max(bw, bh) / group.size + 2.5
                assert abs(left_x - left) < tol and abs(right_x - (left + bw - 1)) < tol
                assert abs(top_y - top) < tol and abs(bottom_y - (top + bh - 1)) < tol


def test_discover_layouts(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "split" / split / cls).mkdir(parents=True)
            coordinate_image(tmp_path / "split" / split / cls / "x.jpg", 8, 8)
    ds = discover(tmp_path / "split")
    assert ds.classes == ["a", "b"] and len(ds.train) == 2 and len(ds.test) == 2
    ds = discover(tmp_path / "split" / "train")
    assert ds.classes == ["a", "b"] and ds.test is None
    (tmp_path / "flat").mkdir()
    for i in range(3):
        coordinate_image(tmp_path / "flat" / f"{i}.jpg", 8, 8)
    ds = discover(tmp_path / "flat")
    assert not ds.labelled and ds.train.labels == [-1] * 3 and ds.test is None
    assert math.isclose(len(ds.train.subset(2, 0)), 2)


def test_the_dataloaders_pin_step_pins_every_tensor_of_a_batch(coordinate_split, monkeypatch):
    """DataLoader(pin_memory=True) pins a custom batch type through its ``pin_memory()``; without
    one the pil backend's batches (views of about 100 MB at ImageNet sizes) stayed pageable. Pinning
    needs a CUDA runtime, absent here, so Tensor.pin_memory is replaced by a recorder: what is
    checked is that the pin step reaches every tensor and the batch it returns holds the results."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = []

    def record(tensor, *args):
        pinned.append(tensor.clone())
        return pinned[-1]

    monkeypatch.setattr(torch.Tensor, "pin_memory", record)
    loader = build_loader("pil", coordinate_split, GROUPS, 4, 0, torch.device("cpu"), 0)
    batch = next(iter(loader.loader))
    out = pin_memory(batch)
    assert isinstance(out, Batch) and len(pinned) == len(batch.views) + 2
    assert all(a is b for a, b in zip([*out.views, out.labels, out.indices], pinned))
    assert all(torch.equal(a, b) for a, b in zip(out.views, batch.views))
