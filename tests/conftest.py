from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
# the GPU machine has no ../shared: scripts/gpu_check.sh points here at its carried copy
CIFAR_ARCHIVE = Path(os.environ.get("SSLIGHT_CIFAR_ARCHIVE") or SHARED / "cifar10-jpeg.tar.gz")

# Small heads keep the CPU tests fast; the method code paths are the full ones.
TINY = [
    "dino.out_dim=256", "dino.hidden_dim=128", "dino.bottleneck_dim=32",
    "swav.hidden_dim=128", "swav.n_prototypes=32", "moco.hidden_dim=128", "moco.queue_length=128",
    "eval.bank_limit=200", "eval.query_limit=100", "data.workers=0", "train.log_every=1",
]


@pytest.fixture(autouse=True)
def private_data_root(tmp_path_factory, monkeypatch):
    """Tests never write caches (scans, .beton files) into the user's data directory."""
    monkeypatch.setenv("SSLIGHT_DATA", str(tmp_path_factory.getbasetemp() / "sslight-home"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """An SSLIGHT_DATA folder holding (a link to) the shared CIFAR-10 archive, prepared once."""
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"{CIFAR_ARCHIVE} not found")
    root = tmp_path_factory.mktemp("sslight-data")
    (root / CIFAR_ARCHIVE.name).symlink_to(CIFAR_ARCHIVE)
    from loaders.datasets import prepare_cifar10

    prepare_cifar10(root)
    return root


@pytest.fixture
def cifar_env(data_dir, monkeypatch) -> Path:
    monkeypatch.setenv("SSLIGHT_DATA", str(data_dir))
    return data_dir


@pytest.fixture(scope="session")
def cifar_small(tmp_path_factory) -> Path:
    """A 200/100-image CIFAR-10 ImageFolder (train/test): each class's first 20/10 files, read
    straight from the archive (unpacking all 60000 files costs about 30 s of file creation here)."""
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"{CIFAR_ARCHIVE} not found")
    root = tmp_path_factory.mktemp("cifar-small")
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
        by_class: dict[tuple[str, str], list[tarfile.TarInfo]] = {}
        for m in files:
            split, cls, _ = Path(m.name).parts[-3:]
            by_class.setdefault((split, cls), []).append(m)
        per_class = {"train": 20, "test": 10}
        chosen = [m for (split, _), ms in by_class.items() if split in per_class
                  for m in sorted(ms, key=lambda m: m.name)[:per_class[split]]]
        for m in sorted(chosen, key=lambda m: m.offset):  # in archive order: the gzip stream is read once
            split, cls, name = Path(m.name).parts[-3:]
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            (root / split / cls / name).write_bytes(tar.extractfile(m).read())
    return root


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped cleanly without it (they run in scripts/gpu_check.sh)."""
    import torch

    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(no_gpu)


@pytest.fixture(scope="session")
def cifar_packed(cifar_small, tmp_path_factory) -> Path:
    """``cifar_small`` packed (``loaders.pack``) into shards of about 64 KB: 4 train shards of about
    60 images, 2 test shards."""
    from loaders.pack import pack

    root = tmp_path_factory.mktemp("cifar-packed")
    pack(str(cifar_small), str(root), shard_bytes=64 << 10, workers=2)
    return root
