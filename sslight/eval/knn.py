"""Weighted kNN classification on frozen backbone features (as in DINO's eval_knn)."""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F

from loaders.datasets import Dataset
from sslight.config import Config
from sslight.eval.features import extract
from sslight.interrupt import stoppable
from sslight.precision import dtype_of


@functools.cache  # a note a run would repeat at every evaluation is said once
def note(text: str) -> None:
    print(f"sslight: note: {text}", file=sys.stderr, flush=True)


def usable_ks(ks, bank_size: int) -> list[int]:
    """``ks`` with any k larger than the bank clipped to the bank's size (a k=200 vote over a
    100-image bank is a k=100 vote: reported as such, with a note)."""
    larger = [k for k in ks if k > bank_size]
    if larger:
        note(f"kNN k={','.join(map(str, larger))} is more than the {bank_size} images of the bank; "
             f"clipped to k={bank_size}")
    return list(dict.fromkeys(min(k, bank_size) for k in ks))


@torch.no_grad()
def knn_accuracies(bank, bank_labels, queries, query_labels, ks, temperature: float, n_classes: int,
                   chunk: int = 1024) -> dict[int, float]:
    """Top-1 accuracy (%) for each k of cosine-similarity kNN with exp(sim / T) vote weights,
    keyed by the k used (:func:`usable_ks`).

    One top-k search at the largest k serves every k: the neighbours come sorted by similarity.
    """
    ks = usable_ks(ks, len(bank))
    bank = F.normalize(bank, dim=1)
    queries = F.normalize(queries, dim=1)
    widest = max(ks)
    correct = dict.fromkeys(ks, 0)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        sim, idx = (q @ bank.T).topk(widest, dim=1)
        weights, neighbour_labels = (sim / temperature).exp(), bank_labels[idx]
        truth = query_labels[start:start + chunk]
        for k in ks:
            votes = torch.zeros(len(q), n_classes, device=q.device)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            correct[k] += (votes.argmax(1) == truth).sum().item()
    return {k: 100.0 * c / len(queries) for k, c in correct.items()}


def knn_top1(bank, bank_labels, queries, query_labels, k: int, temperature: float, n_classes: int) -> float:
    (top1,) = knn_accuracies(bank, bank_labels, queries, query_labels, [k], temperature, n_classes).values()
    return top1


def knn_evaluation(backbone, dataset: Dataset, cfg: Config, device: torch.device):
    """(kNN top-1 at k = ``eval.k``, query features, query labels): the test split's images
    (``eval.query_limit``) against a bank of the train split's (``eval.bank_limit``).

    This is the training run's evaluation: a stop signal ends it within a batch of features
    (nothing to save: the run's checkpoints are written before it), not after the next epoch's
    first step as training's own handler would."""
    e, dtype, size = cfg.eval, dtype_of(cfg.train.precision), cfg.views.global_size
    with stoppable("the kNN evaluation", "its checkpoints are kept; continue with --resume auto"):
        bank, bank_labels = extract(backbone, dataset.train.subset(e.bank_limit, cfg.train.seed), size, device,
                                    dtype, cfg.data.workers)
        queries, query_labels = extract(backbone, dataset.test.subset(e.query_limit, cfg.train.seed), size,
                                        device, dtype, cfg.data.workers)
        top1 = knn_top1(bank, bank_labels, queries, query_labels, e.k, e.temperature, len(dataset.classes))
    return top1, queries, query_labels
