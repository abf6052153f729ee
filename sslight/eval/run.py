"""``sslight eval``: kNN, linear probe and semi-supervised fine-tuning of a checkpoint's backbone.

Results go to ``eval-<checkpoint name>.json`` beside the checkpoint, and one summary line to stdout.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from loaders.datasets import DataError, load_dataset
from sslight.checkpoint import write_json
from sslight.config import ConfigError, label_percents
from sslight.eval import trained
from sslight.eval.features import FeatureCache
from sslight.eval.finetune import finetune
from sslight.eval.knn import knn_accuracies
from sslight.eval.linear import topk_accuracy, train_linear
from sslight.eval.subsets import label_subset
from sslight.interrupt import stoppable
from sslight.precision import dtype_of

KNN_KS = (10, 20, 100, 200)
TASKS = ("knn", "linear", "semisup")
CPU_TASKS = ("knn",)  # minutes; the 100-epoch linear probe and the fine-tuning take hours on a CPU


def parse_tasks(text: str) -> list[str] | None:
    """The tasks ``--tasks`` names; None when it names none (the device's default, :func:`default_tasks`)."""
    if not text:
        return None
    tasks = [t for t in text.split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ConfigError(f"--tasks {text!r}: expected a comma-separated subset of {','.join(TASKS)}")
    return tasks


def default_tasks(device: torch.device) -> list[str]:
    if device.type != "cpu":
        return list(TASKS)
    print(f"sslight: note: on a CPU the default is --tasks {','.join(CPU_TASKS)}; "
          f"--tasks {','.join(TASKS)} adds the linear probe and fine-tuning (hours on a CPU)",
          file=sys.stderr, flush=True)
    return list(CPU_TASKS)


def result_path(ckpt: Path) -> Path:
    return ckpt.parent / f"eval-{ckpt.stem}.json"


def evaluate_checkpoint(ckpt: str | Path, overrides: list[str], tasks: list[str] | None = None) -> dict:
    """Evaluates ``tasks`` (None: :func:`default_tasks`) and writes the result file. A stop signal
    ends it within a batch or an SGD step, before the result file is written; the features
    extracted so far stay cached for the next try."""
    with stoppable("the evaluation", "no result written (features extracted so far are cached)"):
        result = evaluate(trained.load(ckpt, overrides), tasks)
    write_json(result_path(Path(result["checkpoint"])), result)
    return result


def evaluate(run: trained.TrainedBackbone, tasks: list[str] | None) -> dict:
    path, cfg = run.path, run.cfg
    dataset = load_dataset(cfg.data.path)
    if dataset.test is None or not dataset.labelled:
        raise DataError(f"data.path={dataset.root!r}: evaluation needs labelled train/ and val/ or test/ "
                        "ImageFolder subtrees")
    device = torch.device(cfg.train.device)
    dtype = dtype_of(cfg.train.precision)
    tasks = tasks or default_tasks(device)
    train_split = dataset.train.subset(cfg.eval.bank_limit, cfg.train.seed)
    test_split = dataset.test.subset(cfg.eval.query_limit, cfg.train.seed)
    n_classes = len(dataset.classes)
    result: dict = dict(checkpoint=str(path), data=dataset.root, train_images=len(train_split),
                        test_images=len(test_split), precision=cfg.train.precision, seconds={})
    if "knn" in tasks or "linear" in tasks:
        start = time.perf_counter()
        cache = FeatureCache(path, run.build(), cfg.views.global_size, device, dtype, cfg.data.workers)
        train_feats, train_labels = cache.get(train_split)
        test_feats, test_labels = cache.get(test_split)
        result["seconds"]["features"] = time.perf_counter() - start
    if "knn" in tasks:
        start = time.perf_counter()
        accs = knn_accuracies(train_feats, train_labels, test_feats, test_labels, KNN_KS,
                              cfg.eval.temperature, n_classes)
        result["knn"] = {str(k): acc for k, acc in accs.items()}
        result["seconds"]["knn"] = time.perf_counter() - start
    if "linear" in tasks:
        start = time.perf_counter()
        flipped, _ = cache.get(train_split, flip=True)
        feats, labels = torch.cat([train_feats, flipped]), torch.cat([train_labels, train_labels])
        head = train_linear(lambda idx: feats[idx], labels, feats.shape[1], n_classes, cfg.linear, cfg.train.seed)
        with torch.no_grad():
            acc = topk_accuracy(head(test_feats), test_labels)
        result["linear"] = dict(top1=acc[1], top5=acc[5])
        result["seconds"]["linear"] = time.perf_counter() - start
    if "semisup" in tasks:
        result["semisup"] = {}
        for percent in label_percents(cfg.semisup.percents):
            start = time.perf_counter()
            subset, subset_path = label_subset(dataset, percent, cfg.semisup.subset_seed)
            scores = finetune(run.build(), subset, test_split, n_classes, cfg)  # each from the trained weights
            result["semisup"][f"{percent:g}"] = dict(scores, images=len(subset), subset_file=str(subset_path))
            result["seconds"][f"semisup_{percent:g}"] = time.perf_counter() - start
    return result


def summary(result: dict) -> str:
    parts = [Path(result["checkpoint"]).name]
    if "knn" in result:
        parts.append("kNN " + " ".join(f"k{k} {v:.1f}" for k, v in result["knn"].items()))
    if "linear" in result:
        parts.append(f"linear top-1 {result['linear']['top1']:.1f} top-5 {result['linear']['top5']:.1f}")
    for percent, scores in result.get("semisup", {}).items():
        parts.append(f"semi-sup {percent}% top-1 {scores['top1']:.1f} top-5 {scores['top5']:.1f}")
    return " | ".join(parts)


def main(ckpt: str, overrides: list[str], tasks_text: str) -> int:
    result = evaluate_checkpoint(ckpt, overrides, parse_tasks(tasks_text))
    print(summary(result), flush=True)
    print(f"results: {result_path(Path(result['checkpoint']))}", flush=True)
    return 0
