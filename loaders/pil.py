"""Reference backend: PIL decodes once per image in DataLoader workers, then cuts all views."""

from __future__ import annotations

import io

import torch
from PIL import Image

from loaders.batch import Batch, channels_last_views
from loaders.geometry import view_params
from loaders.images import open_rgb, to_uint8_chw
from loaders.source import epoch_source


class MultiCropDataset(torch.utils.data.Dataset):
    def __init__(self, split, groups, seed: int, reader):
        self.split, self.groups, self.seed, self.reader = split, groups, seed, reader

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        epoch, index = key
        image = open_rgb(io.BytesIO(self.reader.read(epoch, index)))
        params = view_params(self.seed, epoch, index, image.width, image.height, self.groups)
        views = []
        for group, boxes in zip(self.groups, params):
            for top, left, h, w, flip in boxes:
                # One call crops and resizes with PIL's antialiased bicubic filter.
                view = image.resize((group.size, group.size), Image.BICUBIC, box=(left, top, left + w, top + h))
                if flip:
                    view = view.transpose(Image.FLIP_LEFT_RIGHT)
                views.append(to_uint8_chw(view))
        return views, self.split.labels[index], index


def collate_groups(groups):
    def collate(samples) -> Batch:
        out, start = [], 0
        for g in groups:
            per_view = [torch.stack([s[0][start + v].movedim(0, -1) for s in samples]) for v in range(g.n)]
            out.append(channels_last_views(torch.stack(per_view)))
            start += g.n
        labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
        indices = torch.tensor([s[2] for s in samples], dtype=torch.long)
        return Batch(out, labels, indices)

    return collate


class PilLoader:
    works_in_caller = False  # DataLoader workers decode and cut
    def __init__(self, split, groups, batch_size, seed, device, workers, rank=0, world=1):
        self.device = device
        self.sampler, reader = epoch_source(split, batch_size, seed, rank, world, workers)
        self.loader = torch.utils.data.DataLoader(
            MultiCropDataset(split, groups, seed, reader), batch_sampler=self.sampler, num_workers=workers,
            collate_fn=collate_groups(groups), pin_memory=device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
        )

    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch()

    def epoch(self, epoch: int, skip_batches: int = 0):
        self.sampler.set_epoch(epoch, skip_batches)
        for batch in self.loader:
            yield batch.to(self.device)
