"""Dataset discovery: the default CIFAR-10, ImageFolder trees with splits, flat folders."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from loaders.errors import DataError
from loaders.scan import scan
from loaders.shards import common_size, is_sharded, load_index, load_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
TRAIN_SPLITS = ("train",)
EVAL_SPLITS = ("val", "test")
CIFAR_ARCHIVE = "cifar10-jpeg.tar.gz"
CIFAR_SIZE = 32
# torchvision's CIFAR-10 source; fetched here, as torchvision's own download draws a tqdm bar whose
# carriage-return frames fill a batch job's log
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass
class Split:
    files: list[str]
    labels: list[int]  # -1 for unlabelled images

    def __len__(self) -> int:
        return len(self.files)

    def sample_name(self, index: int) -> str:
        return self.files[index]

    def read(self, index: int) -> bytes:
        """Sample ``index``'s encoded bytes (as :meth:`loaders.shards.ShardedSplit.read`)."""
        with open(self.files[index], "rb") as f:
            return f.read()

    def read_many(self, indices: list[int]) -> list[bytes]:
        return [self.read(i) for i in indices]

    def subset(self, n: int, seed: int) -> "Split":
        if not n or n >= len(self.files):
            return self
        keep = np.sort(np.random.default_rng([seed, 0x5EED]).permutation(len(self.files))[:n])
        return Split([self.files[i] for i in keep], [self.labels[i] for i in keep])

    def without(self, bad) -> "Split":
        keep = [i for i, f in enumerate(self.files) if f not in bad]
        return Split([self.files[i] for i in keep], [self.labels[i] for i in keep])


@dataclass
class Picked:
    """Some samples of a split, by index: a packed dataset's label subset."""

    base: object  # a Split or a loaders.shards.ShardedSplit
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    @functools.cached_property
    def labels(self) -> list[int]:
        labels = self.base.labels
        return [labels[i] for i in self.indices]

    @functools.cached_property
    def files(self) -> list[str]:
        return [self.base.sample_name(i) for i in self.indices]

    def sample_name(self, index: int) -> str:
        return self.base.sample_name(self.indices[index])

    def read(self, index: int) -> bytes:
        return self.base.read(self.indices[index])

    def read_many(self, indices: list[int]) -> list[bytes | None]:
        return self.base.read_many([self.indices[i] for i in indices])


@dataclass
class Dataset:
    root: str
    train: Split
    test: Split | None
    classes: list[str]
    excluded: dict[str, str] = field(default_factory=dict)  # unusable file -> reason

    @property
    def labelled(self) -> bool:
        return bool(self.classes)


def data_root() -> Path:
    return Path(os.environ.get("SSLIGHT_DATA") or Path.home() / ".cache" / "sslight")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _folder_split(path: Path) -> tuple[Split, list[str]]:
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        for root, _, names in sorted(os.walk(path / name)):
            for f in sorted(names):
                if _is_image(f):
                    files.append(os.path.join(root, f))
                    labels.append(label)
    return Split(files, labels), classes


def _flat_split(path: Path) -> Split:
    files = sorted(str(p) for p in path.iterdir() if p.is_file() and _is_image(p.name))
    return Split(files, [-1] * len(files))


def discover(path: str | Path) -> Dataset:
    """A folder with train/ and val/ or test/ subtrees, a plain ImageFolder tree, or flat images."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"data.path={str(path)!r}: no such folder; allowed: a folder with train/ (and val/ or "
                        "test/), an ImageFolder tree, or a folder of images")
    subdirs = {d.name.lower(): d for d in path.iterdir() if d.is_dir()}
    train_dir = next((subdirs[s] for s in TRAIN_SPLITS if s in subdirs), None)
    if train_dir is not None:
        train, classes = _folder_split(train_dir)
        test_dir = next((subdirs[s] for s in EVAL_SPLITS if s in subdirs), None)
        test = None
        if test_dir is not None:
            test, test_classes = _folder_split(test_dir)
            if test_classes != classes:
                def named(names: list[str], shown: int = 5) -> str:
                    more = f" and {len(names) - shown} more" if len(names) > shown else ""
                    return ", ".join(names[:shown]) + more if names else "none"

                only_train = sorted(set(classes) - set(test_classes))
                only_test = sorted(set(test_classes) - set(classes))
                raise DataError(f"data.path={str(path)!r}: the classes of train/ and {test_dir.name}/ differ "
                                f"(only in train/: {named(only_train)}; only in {test_dir.name}/: {named(only_test)}); "
                                f"allowed: the same class folders in both")
        dataset = Dataset(str(path), train, test, classes)
    else:
        train, classes = _folder_split(path)
        if not len(train):
            train, classes = _flat_split(path), []
        dataset = Dataset(str(path), train, None, classes)
    if not len(dataset.train):
        raise DataError(f"data.path={str(path)!r}: found no images ({', '.join(IMAGE_EXTENSIONS)})")
    return dataset


def common_image_size(split: Split, probe: int = 32) -> int | None:
    """The side of the images if the first ``probe`` are all the same square size, else None."""
    sizes = set()
    for f in split.files[:probe]:
        try:
            with Image.open(f) as im:
                sizes.add(im.size)
        except OSError:
            continue
    if len(sizes) == 1:
        w, h = sizes.pop()
        if w == h:
            return w
    return None


def probe_image_size(path: str) -> int | None:
    """:func:`common_image_size` of the dataset at ``path``, known before it is prepared: the
    default CIFAR-10 is 32 px; a packed dataset's index says it; a folder is listed (read only)
    and probed."""
    if not path:
        return CIFAR_SIZE
    if is_sharded(path):
        return common_size(load_index(path)[0])
    return common_image_size(discover(path).train)


def load_packed(path: str) -> Dataset:
    """The packed dataset at ``path`` (a folder or an http(s) URL): its index alone, no image listed."""
    index, digest = load_index(path)
    splits = index["splits"]
    if "train" not in splits:
        raise DataError(f"data.path={path!r}: the pack has no train split (it has {', '.join(splits)})")
    test = next((s for s in EVAL_SPLITS if s in splits), None)
    return Dataset(path, load_split(path, index, digest, "train"),
                   load_split(path, index, digest, test) if test else None, list(index.get("classes", [])))


def _extract(archive: Path, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, target)  # atomic: a half-extracted tree is never taken for the dataset
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(url: str, path: Path) -> None:
    """``url`` into ``path`` (complete or absent), said in one line on stderr: no redrawn bar."""
    print(f"downloading {url} into {path.parent} (once)", file=sys.stderr, flush=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _download_cifar10(target: Path) -> None:
    import torchvision

    raw = target.parent / "cifar10-download"
    tmp = Path(tempfile.mkdtemp(prefix=".cifar-", dir=target.parent))
    try:
        raw.mkdir(exist_ok=True)
        fetch(CIFAR_URL, raw / CIFAR_URL.rsplit("/", 1)[1])  # torchvision checks and unpacks it, downloads nothing
        for split, train in (("train", True), ("test", False)):
            ds = torchvision.datasets.CIFAR10(raw, train=train, download=True)
            counts: dict[int, int] = {}
            for image, label in ds:
                folder = tmp / split / ds.classes[label]
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{counts.get(label, 0):04d}.jpg", quality=95)
                counts[label] = counts.get(label, 0) + 1
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(raw, ignore_errors=True)


def prepare_cifar10(root: Path | None = None) -> Path:
    """The CIFAR-10 ImageFolder tree in the data directory, prepared on first use."""
    root = root or data_root()
    target = root / "cifar10"
    if (target / "train").is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = root / CIFAR_ARCHIVE
    if archive.exists():
        _extract(archive, target)
        return target
    try:
        _download_cifar10(target)
    except Exception as exc:  # offline, or the download failed half-way
        raise DataError(
            f"CIFAR-10 is not prepared in {root} and could not be downloaded ({type(exc).__name__}); "
            f"put {CIFAR_ARCHIVE} in {root}, set SSLIGHT_DATA to a folder holding it, or pass DATA=/path"
        ) from None
    return target


def load_dataset(path: str) -> Dataset:
    """The dataset at ``path`` (CIFAR-10 when empty), unusable files excluded; a packed dataset
    was screened when it was packed."""
    if is_sharded(path):
        return load_packed(path)
    dataset = discover(path or prepare_cifar10())
    files = dataset.train.files + (dataset.test.files if dataset.test else [])
    dataset.excluded = scan(files, data_root())
    if dataset.excluded:
        dataset.train = dataset.train.without(dataset.excluded)
        dataset.test = dataset.test.without(dataset.excluded) if dataset.test else None
    if not len(dataset.train):
        raise DataError(f"data.path={dataset.root!r}: none of the images is readable")
    return dataset
