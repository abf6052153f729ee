"""The nvjpeg backend and its multi-crop kernel: agreement with PIL, the Triton kernel's
arithmetic (interpreted on the CPU), fallback decodes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loaders import build_loader
from loaders.batch import ViewGroup, is_channels_last_views
from loaders.crop import multi_crop_torch
from loaders.datasets import Split
from loaders.nvjpeg import decode_batch

GROUPS = [ViewGroup(2, 32, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 18, (0.05, 0.3), (3 / 4, 4 / 3))]


def natural_image(w, h, seed=0):
    """Smooth structure plus texture, like a photo: random low-frequency waves and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] += np.sin(x * fx * 6.3 + y * fy * 6.3 + phase)
    img = (img - img.min()) / (img.max() - img.min()) * 220 + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("box, size", [((10, 20, 180, 240, False), 96), ((0, 0, 40, 30, True), 64),
                                       ((50, 60, 120, 120, False), 32)])
def test_crop_close_to_pil_bicubic(box, size):
    arr = natural_image(300, 200)
    top, left, h, w, flip = box
    ours = multi_crop_torch([torch.from_numpy(arr).permute(2, 0, 1).contiguous()], [[box]], size)[0, 0]
    pil = Image.fromarray(arr).resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
    if flip:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
    diff = (ours.float() - ref).abs()
    assert diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


TRITON_CHECK = r"""
import torch, numpy as np
from loaders.crop import multi_crop_torch, multi_crop_triton
rng = np.random.default_rng(0)
images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in [(20, 26), (12, 15), (30, 9)]]
for size in (8, 6):
    boxes = []
    for im in images:
        h, w = im.shape[1:]
        views = []
        for v in range(2):
            bh, bw = int(rng.integers(4, h + 1)), int(rng.integers(4, w + 1))
            views.append((int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw, bool(v)))
        boxes.append(views)
    a = multi_crop_torch(images, boxes, size).int()
    b = multi_crop_triton(images, boxes, size).int()
    assert a.shape == b.shape, (a.shape, b.shape)
    print(size, (a - b).abs().max().item(), (a - b).abs().float().mean().item())
"""


def test_triton_kernel_matches_torch_path_interpreted():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in proc.stdout.split("\n"):
        if line:
            _, max_diff, mean_diff = line.split()
            # torch's uint8 resampler is fixed point, the kernel float: rounding may differ by 1
            assert int(max_diff) <= 1 and float(mean_diff) < 0.1, line


@pytest.fixture
def mixed_files(tmp_path):
    files = []
    for i, mode in enumerate(["RGB", "L", "CMYK", "RGB"]):
        arr = natural_image(80 + 10 * i, 60, seed=i)
        im = Image.fromarray(arr).convert(mode)
        path = tmp_path / (f"{i}.png" if i == 3 else f"{i}.jpg")
        im.save(path)
        files.append(str(path))
    return files


def test_decode_batch_handles_grey_cmyk_png(mixed_files):
    from torchvision.io import read_file

    images = decode_batch([read_file(f) for f in mixed_files], mixed_files, torch.device("cpu"))
    for f, im in zip(mixed_files, images):
        ref = np.array(Image.open(f).convert("RGB"))
        assert im.shape == (3, *ref.shape[:2]) and im.dtype == torch.uint8
        # JPEG decoders differ slightly (and CMYK conversion more): compare coarsely
        assert (im.permute(1, 2, 0).float() - torch.from_numpy(ref).float()).abs().mean() < 6


def test_cpu_decode_equals_torchvision(tmp_path):
    """The CPU decode (simplejpeg) gives torchvision's decode_jpeg pixels, in the same layout."""
    from torchvision.io import decode_jpeg, read_file

    from loaders.nvjpeg import decode_jpeg_cpu

    path = tmp_path / "photo.jpg"
    Image.fromarray(natural_image(123, 77)).save(path, quality=90)
    data = read_file(str(path))
    ours, ref = decode_jpeg_cpu(data), decode_jpeg(data)
    assert ours.shape == ref.shape == (3, 77, 123) and ours.dtype == torch.uint8
    assert (ours.int() - ref.int()).abs().max() <= 1


def test_nvjpeg_views_match_pil_backend(mixed_files):
    split = Split(mixed_files, [0, 1, 2, 3])
    device = torch.device("cpu")
    ours = next(iter(build_loader("nvjpeg", split, GROUPS, 4, 0, device, 0).epoch(0)))
    ref = next(iter(build_loader("pil", split, GROUPS, 4, 0, device, 0).epoch(0)))
    assert torch.equal(ours.indices, ref.indices)
    for a, b in zip(ours.views, ref.views):
        assert a.shape == b.shape and a.dtype == torch.uint8
        diff = (a.float() - b.float()).abs()
        assert diff.mean() < 3, diff.mean()


def test_multi_crop_layout_view_major():
    images = [torch.full((3, 20, 20), i, dtype=torch.uint8) for i in range(3)]
    boxes = [[(0, 0, 20, 20, False), (5, 5, 10, 10, True)] for _ in images]
    out = multi_crop_torch(images, boxes, 8)
    assert out.shape == (2, 3, 3, 8, 8) and is_channels_last_views(out)
    for b in range(3):
        assert (out[:, b] == b).all()


def test_cpu_workers_cut_the_same_views(mixed_files):
    """On the CPU the workers decode and cut; the views equal the in-process ones, also after the
    main process has used its crop thread pool (forked workers make their own)."""
    split = Split(mixed_files * 2, [0, 1, 2, 3] * 2)
    device = torch.device("cpu")
    in_process = list(build_loader("nvjpeg", split, GROUPS, 4, 0, device, 0).epoch(1))
    in_workers = list(build_loader("nvjpeg", split, GROUPS, 4, 0, device, 2).epoch(1))
    assert len(in_process) == len(in_workers) == 2
    for a, b in zip(in_process, in_workers):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))


def test_cpu_worker_buffers_reused_only_after_release(mixed_files):
    """Workers write each batch into a shared buffer they reuse once the main process lets go of it:
    views held by the consumer never change, and dropped buffers come back (the main process keeps
    its mapping, so a returning buffer has the same address)."""
    split = Split(mixed_files * 8, [0, 1, 2, 3] * 8)
    device = torch.device("cpu")
    reference = [b.views for e in range(3) for b in build_loader("nvjpeg", split, GROUPS, 2, 0, device, 0).epoch(e)]
    loader = build_loader("nvjpeg", split, GROUPS, 2, 0, device, 2)
    held, addresses = [], []
    for epoch in range(3):
        for b, batch in enumerate(loader.epoch(epoch)):
            if (epoch, b) in ((0, 0), (1, 7)):  # kept to the end; the other batches are dropped at once
                held.append((len(addresses), batch.views))
            addresses.append(batch.views[0].untyped_storage().data_ptr())
            del batch
    for i, views in held:
        assert all(torch.equal(x, y) for x, y in zip(views, reference[i]))
    assert len(addresses) == 48 and len(set(addresses)) <= 2 * 5 + len(held)
