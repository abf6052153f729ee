"""Semi-supervised fine-tuning: the whole pre-trained network plus a linear head on a label subset."""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from loaders.images import open_rgb, to_uint8_chw
from sslight.config import Config
from sslight.eval.features import extract, image_loader, normalised
from sslight.eval.linear import topk_accuracy
from sslight.eval.sgd import fit
from sslight.precision import autocast, dtype_of
from sslight.schedules import cosine

CROP_SCALE = (0.25, 1.0)  # the usual fine-tuning augmentation: random-resized crop and flip


class TrainImages(torch.utils.data.Dataset):
    def __init__(self, split, size: int):
        self.split = split
        self.augment = transforms.Compose([
            transforms.RandomResizedCrop(size, scale=CROP_SCALE, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
        ])

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        image: Image.Image = self.augment(open_rgb(io.BytesIO(self.split.read(i))))
        return to_uint8_chw(image), self.split.labels[i]


def finetune(backbone: nn.Module, train_split, test_split, n_classes: int, cfg: Config) -> dict[str, float]:
    """Fine-tunes ``backbone`` (in place) and a new linear head; top-1/top-5 on ``test_split``."""
    s, device = cfg.semisup, next(backbone.parameters()).device
    dtype = dtype_of(cfg.train.precision)
    torch.manual_seed(cfg.train.seed)
    head = nn.Linear(backbone.num_features, n_classes).to(device)
    batch = min(s.batch_size, len(train_split))
    loader = image_loader(TrainImages(train_split, cfg.views.global_size), batch, cfg.data.workers, shuffle=True,
                          drop_last=True, generator=torch.Generator().manual_seed(cfg.train.seed))
    lr = s.lr * batch / 256
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=s.weight_decay)

    def logits_of(images: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return head(backbone(normalised(images, device)))

    backbone.train()
    batches = ((images, labels.to(device)) for _ in range(s.epochs) for images, labels in loader)
    fit(opt, cosine(lr, 0.0, s.epochs * len(loader)), batches, logits_of)
    feats, labels = extract(backbone, test_split, cfg.views.global_size, device, dtype, cfg.data.workers)
    with torch.no_grad():
        acc = topk_accuracy(head(feats), labels)
    return dict(top1=acc[1], top5=acc[5])
