"""The CUDA paths: nvJPEG decode + the Triton multi-crop kernel, Photometric on the GPU, and a
compiled bf16 training step. Marked ``gpu``: skipped without one; `scripts/gpu_check.sh` runs them."""

import numpy as np
import pytest
import torch

from loaders import build_loader
from loaders.batch import ViewGroup
from loaders.crop import multi_crop_torch, multi_crop_triton, triton_usable
from loaders.datasets import discover
from sslight.augment import Photometric
from sslight.methods import METHODS
from sslight.cli import main as cli_main
from sslight.train.log import read
from tests.conftest import TINY

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
GROUPS = [ViewGroup(2, 32, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 18, (0.05, 0.3), (3 / 4, 4 / 3))]


def test_triton_kernel_on_gpu_matches_torch_path():
    assert triton_usable(CUDA)
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in [(200, 260), (90, 150)]]
    boxes = [[(10, 20, 150, 200, False), (0, 0, 60, 80, True)], [(5, 5, 80, 140, True), (30, 40, 20, 30, False)]]
    for size in (96, 16):
        ref = multi_crop_torch(images, boxes, size).int()
        got = multi_crop_triton([im.to(CUDA) for im in images], boxes, size).cpu().int()
        assert (ref - got).abs().max() <= 1


def test_nvjpeg_loader_on_gpu_agrees_with_cpu(cifar_small):
    split = discover(cifar_small).train
    cpu = next(iter(build_loader("nvjpeg", split, GROUPS, 16, 0, torch.device("cpu"), 0).epoch(0)))
    gpu = next(iter(build_loader("nvjpeg", split, GROUPS, 16, 0, CUDA, 2).epoch(0)))
    assert torch.equal(cpu.indices.cpu(), gpu.indices.cpu())
    for a, b in zip(cpu.views, gpu.views):
        assert b.device.type == "cuda" and b.dtype == torch.uint8 and a.shape == b.shape
        # nvJPEG and libjpeg-turbo may round IDCT outputs differently
        assert (a.float() - b.cpu().float()).abs().mean() < 2.0


@pytest.fixture
def no_tf32():
    """Full fp32 in cuDNN convolutions and CUDA matmuls: TF32 (on by default for cuDNN) keeps 10
    mantissa bits, about 1e-3 relative, and would be measured instead of the blur and colour matrix."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_photometric_on_gpu_matches_cpu(no_tf32):
    """The GPU's identity-kernel blur and the CPU's blur-the-chosen-subset give one result."""
    views = torch.randint(0, 256, (2, 8, 3, 32, 32), dtype=torch.uint8)
    u = torch.rand(16, 9, generator=torch.Generator().manual_seed(0))
    outs = [Photometric(METHODS["dino"].photometry(2, 6), 32, device, torch.float32).apply(
        views.to(device), 0, u.to(device)).cpu() for device in (torch.device("cpu"), CUDA)]
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


@pytest.mark.parametrize("method", ["dino", "moco"])
def test_compiled_bf16_training_on_gpu(cifar_env, cifar_small, tmp_path, method):
    out = tmp_path / method
    code = cli_main(["train", "--model", "mnv2", "--method", method, "--loader", "nvjpeg", "--data",
                     str(cifar_small), "--steps", "4", "--batch", "16", "--out", str(out),
                     "train.compile=true", "train.precision=bf16", *TINY])
    assert code == 0
    losses = [r["loss"] for r in read(out / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_auto_takes_nvjpeg_and_overlaps_it_on_cuda(cifar_small):
    from loaders.prefetch import Prefetched
    from sslight.recipes import build_config

    assert build_config([], image_size=224).data.loader == "nvjpeg"
    assert build_config([], image_size=32).data.loader == "nvjpeg"
    split = discover(cifar_small).train
    assert isinstance(build_loader("nvjpeg", split, GROUPS, 16, 0, CUDA, 2, overlap=True), Prefetched)


def test_prefetched_gpu_batches_equal_the_serial_ones(cifar_small):
    from loaders.prefetch import Prefetched

    split = discover(cifar_small).train.subset(96, 0)
    serial = list(build_loader("nvjpeg", split, GROUPS, 16, 0, CUDA, 2).epoch(1, 2))
    ahead = list(Prefetched(build_loader("nvjpeg", split, GROUPS, 16, 0, CUDA, 2), CUDA, depth=2).epoch(1, 2))
    assert len(ahead) == len(serial) == 4
    for a, b in zip(serial, ahead):
        assert torch.equal(a.indices, b.indices)
        assert all(torch.equal(u, v) for u, v in zip(a.views, b.views))
