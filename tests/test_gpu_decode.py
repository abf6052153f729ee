"""The data path on CUDA, where its fixes can only be proven: the nvJPEG decode under load (no batch
written while queued kernels still read its memory), a device failure raised rather than taken for
a bad file, the crop kernel at ImageNet sizes, the float fallback without Triton, a crop setup
without host syncs, pinned pil batches and DALI's labels on the device. Skipped without a GPU;
``scripts/gpu_check.sh`` runs them (``-m gpu``)."""

from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import read_file

from loaders import build_loader, crop, dali
from loaders.batch import ViewGroup, is_channels_last_views
from loaders.crop import multi_crop, multi_crop_torch, multi_crop_triton
from loaders.datasets import discover
from loaders.geometry import view_boxes
from loaders.nvjpeg import decode_batch, decode_jpegs_gpu
from loaders.prefetch import Prefetched
from tests.test_nvjpeg import natural_image

pytestmark = pytest.mark.gpu
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
GROUPS = [ViewGroup(2, 32, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 18, (0.05, 0.3), (3 / 4, 4 / 3))]
IMAGENET_GROUPS = [ViewGroup(2, 224, (0.14, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 96, (0.05, 0.14), (3 / 4, 4 / 3))]


def imagenet_sized(seed=0):
    """Photo-like images of ImageNet's sizes (and one small), with their views' boxes per group."""
    shapes = [(375, 500), (500, 333), (333, 500), (64, 48)]
    images = [torch.from_numpy(natural_image(w, h, seed=seed + i)).permute(2, 0, 1) for i, (h, w) in enumerate(shapes)]
    boxes = torch.stack([view_boxes(seed, 0, i, im.shape[2], im.shape[1], IMAGENET_GROUPS) for i, im in enumerate(images)])
    return images, [boxes[:, :2], boxes[:, 2:]]


def test_gpu_decode_under_load_leaves_every_batch_intact(cifar_small):
    """Each batch is copied as it arrives, then read again behind a long kernel (the step's work)
    and dropped with that read still queued: a decode that wrote into freed memory the queued read
    still uses (torchvision's allocates on the current stream, decodes on its own) shows as a
    difference. Serial and prefetched, every batch of an epoch, against the CPU decode."""
    split = discover(cifar_small).train
    reference = list(build_loader("nvjpeg", split, GROUPS, 16, 0, CPU, 0).epoch(0))
    for loader in (build_loader("nvjpeg", split, GROUPS, 16, 0, CUDA, 2),
                   Prefetched(build_loader("nvjpeg", split, GROUPS, 16, 0, CUDA, 2), CUDA, depth=2)):
        copies, late = [], []
        for batch in loader.epoch(0):
            copies.append([v.clone() for v in batch.views])
            torch.cuda._sleep(20_000_000)  # about 10 ms of GPU time queued before the second read
            late.append([v.sum(dtype=torch.int64) for v in batch.views])
            del batch
        torch.cuda.synchronize()
        assert len(copies) == len(reference) == loader.batches_per_epoch()
        for views, sums, ref in zip(copies, late, reference):
            assert [v.sum(dtype=torch.int64).item() for v in views] == [s.item() for s in sums]
            for v, r in zip(views, ref.views):
                # nvJPEG and libjpeg-turbo may round IDCT outputs differently
                assert (v.cpu().float() - r.float()).abs().mean() < 2.0


def test_out_of_memory_in_the_decode_is_raised(tmp_path):
    """A real CUDA out-of-memory inside torchvision's decode (the process held to the memory it
    has): raised, not taken for a bad file and decoded on the CPU."""
    path = tmp_path / "large.jpg"
    Image.fromarray(np.full((4000, 4000, 3), 90, np.uint8)).save(path)
    data, paths = [read_file(str(path))] * 2, [str(path)] * 2
    decode = partial(decode_jpegs_gpu, device=CUDA)
    decode_batch(data[:1], paths[:1], CUDA, decode)  # the decoder's own set-up, outside the limit
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(CUDA).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + (8 << 20)) / total)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            decode_batch(data, paths, CUDA, decode)  # two 48 MB outputs
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def assert_close_to_the_cpu_path(got: torch.Tensor, ref: torch.Tensor) -> None:
    """Within one level, but for the rare pixel where torch's fixed-point uint8 path rounds its
    horizontal pass across a half the float computation does not, and a weight above 1 (an edge
    of an up-scaled box) doubles the step: 2 levels, on one or two pixels in a million here."""
    diff = (got.cpu().int() - ref.int()).abs()
    assert diff.max() <= 2 and (diff > 1).float().mean() < 1e-4 and diff.float().mean() < 0.02, (
        diff.max(), (diff > 1).sum(), diff.float().mean())


def test_triton_kernel_at_imagenet_sizes_matches_the_cpu_path():
    images, boxes = imagenet_sized()
    for group, group_boxes in zip(IMAGENET_GROUPS, boxes):
        got = multi_crop_triton([im.to(CUDA) for im in images], group_boxes, group.size)
        assert_close_to_the_cpu_path(got, multi_crop_torch(images, group_boxes, group.size))


def test_fallback_without_triton_runs_on_cuda_and_matches(monkeypatch):
    """CUDA has no uint8 kernel of the antialiased bicubic filter: without Triton the views are
    resampled in float, as the Triton kernel computes them (within one level) and close to the
    CPU path."""
    images, boxes = imagenet_sized(seed=3)
    on_gpu = [im.to(CUDA) for im in images]
    expected = [multi_crop_triton(on_gpu, b, g.size).cpu().int() for g, b in zip(IMAGENET_GROUPS, boxes)]
    monkeypatch.setattr(crop, "triton_usable", lambda device: False)
    for group, group_boxes, triton_views in zip(IMAGENET_GROUPS, boxes, expected):
        got = multi_crop(on_gpu, group_boxes, group.size)
        assert got.device.type == "cuda" and got.dtype == torch.uint8 and is_channels_last_views(got)
        assert (got.cpu().int() - triton_views).abs().max() <= 1
        assert_close_to_the_cpu_path(got, multi_crop_torch(images, group_boxes, group.size))


def test_crop_setup_does_not_synchronise_the_host():
    """The per-view table crosses from pinned memory, asynchronously: no host sync in the crop
    (a pageable ``torch.tensor(rows).to(cuda)`` raises here)."""
    images, boxes = imagenet_sized(seed=5)
    on_gpu = [im.to(CUDA) for im in images]
    multi_crop_triton(on_gpu, boxes[0], IMAGENET_GROUPS[0].size)  # compiled outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        views = multi_crop_triton(on_gpu, boxes[0], IMAGENET_GROUPS[0].size)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert views.shape == (2, len(images), 3, 224, 224)


def test_pil_batches_are_pinned_with_their_layout(cifar_small):
    loader = build_loader("pil", discover(cifar_small).train, GROUPS, 16, 0, CUDA, 2)
    batch = next(iter(loader.loader))  # as the DataLoader's pin step hands it over
    for tensor in (*batch.views, batch.labels, batch.indices):
        assert tensor.is_pinned()
    assert all(is_channels_last_views(v) for v in batch.views)


@pytest.mark.skipif(not dali.available(), reason="dali not installed")
def test_dali_labels_are_looked_up_on_the_device(cifar_small):
    split = discover(cifar_small).train
    loader = build_loader("dali", split, GROUPS, 16, 0, CUDA, 2)
    for batch in loader.epoch(0):
        assert batch.labels.device.type == batch.indices.device.type == "cuda"
        assert torch.equal(batch.labels.cpu(), torch.tensor(split.labels)[batch.indices.cpu()])
