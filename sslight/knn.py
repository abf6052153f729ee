"""Weighted kNN classification on frozen backbone features (as in DINO's eval_knn)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from loaders.pil import open_rgb, to_uint8_chw
from sslight.augment import IMAGENET_MEAN, IMAGENET_STD

RESIZE_RATIO = 256 / 224  # resize then centre-crop, the usual evaluation geometry


class EvalImages(torch.utils.data.Dataset):
    def __init__(self, split, size: int):
        self.split, self.size = split, size

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
        return to_uint8_chw(image), self.split.labels[i]


@torch.no_grad()
def extract(backbone, split, size: int, device, dtype, workers: int, batch: int = 256):
    """Backbone features (N, D) in float32 and labels (N,) for every image of ``split``."""
    loader = torch.utils.data.DataLoader(EvalImages(split, size), batch_size=batch, num_workers=workers)
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
def knn_top1(bank, bank_labels, queries, query_labels, k: int, temperature: float, n_classes: int,
             chunk: int = 1024) -> float:
    """Top-1 accuracy (%) of cosine-similarity kNN with exp(sim / T) vote weights."""
    bank = F.normalize(bank, dim=1)
    queries = F.normalize(queries, dim=1)
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), n_classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == query_labels[start:start + chunk]).sum().item()
    return 100.0 * correct / len(queries)
