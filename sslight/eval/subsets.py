"""Class-balanced label subsets (1%, 10%) for semi-supervised fine-tuning, fixed in files.

A subset is drawn once and written to ``$SSLIGHT_DATA/subsets/<dataset>/<p>pct-seed<s>.txt``
(one ``path<TAB>class`` line per image, paths relative to the dataset folder); every later
evaluation reads the file, so runs fine-tune on the same images. The draw takes the same
number of images from every class, round(p% of the train split / classes), at least one;
within a class the order is a hash of (seed, path), independent of listing order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from loaders.datasets import DataError, Dataset, Picked, Split, data_root
from loaders.shards import ShardedSplit


def _relative(dataset: Dataset, path: str) -> str:
    """A file's path from the dataset folder; a packed sample's name is already relative to the pack."""
    return path if isinstance(dataset.train, ShardedSplit) else os.path.relpath(path, dataset.root)


def subset_file(dataset: Dataset, percent: float, seed: int) -> Path:
    """Named by the dataset folder and its labelled train images, in any listing order."""
    h = hashlib.sha256()
    for line in sorted(f"{_relative(dataset, f)}\t{y}\n" for f, y in zip(dataset.train.files, dataset.train.labels)):
        h.update(line.encode())
    name = Path(dataset.root).name or "dataset"
    return data_root() / "subsets" / f"{name}-{h.hexdigest()[:12]}" / f"{percent:g}pct-seed{seed}.txt"


def draw(dataset: Dataset, percent: float, seed: int) -> list[int]:
    """Indices into the train split: the same count per class, the class's images in hash order."""
    split, n_classes = dataset.train, len(dataset.classes)
    per_class = max(1, round(percent / 100 * len(split) / n_classes))
    chosen = []
    for label in range(n_classes):
        members = [i for i, y in enumerate(split.labels) if y == label]
        members.sort(key=lambda i: hashlib.sha256(f"{seed}:{_relative(dataset, split.files[i])}".encode()).digest())
        chosen += sorted(members[:per_class], key=lambda i: split.files[i])  # the file lists them by path
    return chosen


def write(dataset: Dataset, indices: list[int], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{_relative(dataset, dataset.train.files[i])}\t{dataset.classes[dataset.train.labels[i]]}\n"
             for i in indices]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)


def read(dataset: Dataset, path: Path) -> Split | Picked:
    if isinstance(dataset.train, ShardedSplit):
        return _read_packed(dataset, path)
    files, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        relative, class_name = line.split("\t")
        if class_name not in dataset.classes:
            raise DataError(f"{path}:{n}: class {class_name!r} is not in the dataset; delete the file to redraw")
        full = os.path.join(dataset.root, relative)
        if not os.path.exists(full):
            raise DataError(f"{path}:{n}: {relative} is missing from the dataset; delete the file to redraw")
        files.append(full)
        labels.append(dataset.classes.index(class_name))
    return Split(files, labels)


def _read_packed(dataset: Dataset, path: Path) -> Picked:
    """The subset of a packed train split: each line names a sample, whose index ends the name."""
    split, indices = dataset.train, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        name, class_name = line.split("\t")
        index = int(name.rsplit(":", 1)[-1]) if name.rsplit(":", 1)[-1].isdigit() else -1
        if not 0 <= index < len(split) or split.sample_name(index) != name:
            raise DataError(f"{path}:{n}: {name} is not in the packed dataset; delete the file to redraw")
        if class_name not in dataset.classes or dataset.classes.index(class_name) != split.labels[index]:
            raise DataError(f"{path}:{n}: {name} is not of class {class_name!r} in the dataset; delete the file "
                            "to redraw")
        indices.append(index)
    return Picked(split, indices)


def label_subset(dataset: Dataset, percent: float, seed: int) -> tuple[Split, Path]:
    """The subset's images and labels, and the file that fixes them (written on first use)."""
    path = subset_file(dataset, percent, seed)
    if not path.exists():
        write(dataset, draw(dataset, percent, seed), path)
    return read(dataset, path), path
