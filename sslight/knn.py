"""Weighted kNN classification on frozen backbone features (as in DINO's eval_knn)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from loaders.pil import open_rgb, to_uint8_chw
from sslight.augment import IMAGENET_MEAN, IMAGENET_STD

RESIZE_RATIO = 256 / 224  # resize then centre-crop, the usual evaluation geometry


class EvalImages(torch.utils.data.Dataset):
    """Centre crops (optionally mirrored) as uint8 CHW tensors, with their labels."""

    def __init__(self, split, size: int, flip: bool = False):
        self.split, self.size, self.flip = split, size, flip

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        image = open_rgb(self.split.files[i])
        if image.size != (self.size, self.size):
            short = round(self.size * RESIZE_RATIO)
            scale = short / min(image.size)
            image = image.resize((max(short, round(image.width * scale)), max(short, round(image.height * scale))),
                                 Image.BICUBIC)
            left, top = (image.width - self.size) // 2, (image.height - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        if self.flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_uint8_chw(image), self.split.labels[i]


@torch.no_grad()
def extract(backbone, split, size: int, device, dtype, workers: int, batch: int = 256, flip: bool = False):
    """Backbone features (N, D) in float32 and labels (N,) for every image of ``split``."""
    loader = torch.utils.data.DataLoader(EvalImages(split, size, flip), batch_size=batch, num_workers=workers)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for images, y in loader:
        x = ((images.to(device).float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            feats.append(backbone(x).float())
        labels.append(y.to(device))
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_accuracies(bank, bank_labels, queries, query_labels, ks, temperature: float, n_classes: int,
                   chunk: int = 1024) -> dict[int, float]:
    """Top-1 accuracy (%) for each k of cosine-similarity kNN with exp(sim / T) vote weights.

    One top-k search at the largest k serves every k: the neighbours come sorted by similarity.
    """
    bank = F.normalize(bank, dim=1)
    queries = F.normalize(queries, dim=1)
    widest = min(max(ks), len(bank))
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
    return knn_accuracies(bank, bank_labels, queries, query_labels, [k], temperature, n_classes)[k]
