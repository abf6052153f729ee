"""Semi-supervised fine-tuning: the whole pre-trained network plus a linear head on a label subset."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms

from loaders.pil import open_rgb, to_uint8_chw
from sslight.augment import IMAGENET_MEAN, IMAGENET_STD
from sslight.config import Config
from sslight.knn import extract
from sslight.linear import topk_accuracy
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
        image: Image.Image = self.augment(open_rgb(self.split.files[i]))
        return to_uint8_chw(image), self.split.labels[i]


def finetune(backbone: nn.Module, train_split, test_split, n_classes: int, cfg: Config) -> dict[str, float]:
    """Fine-tunes ``backbone`` (in place) and a new linear head; top-1/top-5 on ``test_split``."""
    s, device = cfg.semisup, next(backbone.parameters()).device
    bf16 = cfg.train.precision == "bf16"
    torch.manual_seed(cfg.train.seed)
    head = nn.Linear(backbone.num_features, n_classes).to(device)
    batch = min(s.batch_size, len(train_split))
    loader = torch.utils.data.DataLoader(
        TrainImages(train_split, cfg.views.global_size), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=cfg.data.workers, generator=torch.Generator().manual_seed(cfg.train.seed))
    lr = s.lr * batch / 256
    schedule = cosine(lr, 0.0, s.epochs * len(loader))
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=s.weight_decay)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    backbone.train()
    step = 0
    for _ in range(s.epochs):
        for images, labels in loader:
            x = ((images.to(device).float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = float(schedule[step])
            with autocast():
                logits = head(backbone(x))
            loss = F.cross_entropy(logits.float(), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    dtype = torch.bfloat16 if bf16 else torch.float32
    feats, labels = extract(backbone, test_split, cfg.views.global_size, device, dtype, cfg.data.workers)
    with torch.no_grad():
        acc = topk_accuracy(head(feats), labels)
    return dict(top1=acc[1], top5=acc[5])
