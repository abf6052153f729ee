"""How much of a kNN figure is BatchNorm's running statistics: a checkpoint's student and teacher
backbones, and the same backbone at initialisation, each scored as it is and with its running
statistics re-estimated on clean training images (the images evaluation sees, no augmentation).

Usage: python -m benchmarks.bn_recalibration RUN_DIR_OR_CHECKPOINT [--images 2000] [--bank 10000] [--queries 2000]
A random network in eval mode has mean 0 / variance 1 statistics, so its BatchNorm layers are
identity maps; a trained one normalises with what it saw in training. This tells the two apart.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

from loaders.datasets import load_dataset
from sslight import checkpoint
from sslight.config import from_dict
from sslight.eval.features import EvalImages, normalised
from sslight.eval.knn import knn_evaluation
from sslight.models import build_backbone


def recalibrated(backbone: nn.Module, images: EvalImages, device: torch.device) -> nn.Module:
    """A copy whose BatchNorm running statistics are the plain average over ``images``."""
    backbone = copy.deepcopy(backbone)
    for m in backbone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average, not an exponential one
    backbone.train()
    with torch.no_grad():
        for x, _ in torch.utils.data.DataLoader(images, batch_size=200):
            backbone(normalised(x.to(device), device))
    return backbone.eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run", help="a run folder (its newest checkpoint) or a checkpoint file")
    p.add_argument("--images", type=int, default=2000, help="training images the statistics are measured on")
    p.add_argument("--bank", type=int, default=10000, help="kNN bank size (0 = the whole train split)")
    p.add_argument("--queries", type=int, default=2000, help="kNN queries (0 = the whole test split)")
    args = p.parse_args()
    device = torch.device("cpu")
    path = Path(args.run) if args.run.endswith(".pt") else checkpoint.latest(Path(args.run))
    state = checkpoint.load(path, device)
    cfg = from_dict(state["config"])
    cfg.eval.bank_limit, cfg.eval.query_limit = args.bank, args.queries
    dataset = load_dataset(cfg.data.path)
    images = EvalImages(dataset.train.subset(args.images, cfg.train.seed + 1), cfg.views.global_size)

    def backbone(prefix: str | None) -> nn.Module:
        net = build_backbone(cfg.model.name, cfg.model.small_stem, cfg.views.global_size)
        if prefix is not None:
            net.load_state_dict({k[len(prefix):]: v for k, v in state["method"].items() if k.startswith(prefix)})
        return net.to(device, memory_format=torch.channels_last).eval()

    print(f"{path}: kNN top-1 (k={cfg.eval.k}; bank {cfg.eval.bank_limit or 'all'}, queries {cfg.eval.query_limit or 'all'})")
    print("| backbone | as it is | statistics re-estimated |")
    print("| --- | ---: | ---: |")
    torch.manual_seed(cfg.train.seed)  # the run's own initialisation
    for name, prefix in (("initialisation", None), ("student", "student.backbone."), ("teacher", "teacher.backbone.")):
        if prefix is not None and not any(k.startswith(prefix) for k in state["method"]):
            continue
        net = backbone(prefix)
        as_is = knn_evaluation(net, dataset, cfg, device)[0]
        again = knn_evaluation(recalibrated(net, images, device), dataset, cfg, device)[0]
        print(f"| {name} | {as_is:.2f} | {again:.2f} |", flush=True)


if __name__ == "__main__":
    main()
