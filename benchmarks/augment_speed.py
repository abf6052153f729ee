"""Device-side photometric augmentation (sslight.augment) against the same ops done per view
with PIL, as the original SSLight data path does them, side by side in one run.

Usage: python -m benchmarks.augment_speed [--recipe sslight_cnn] [--batch 64] [--repeats 5] [--csv out.csv]
Rows: milliseconds per image (all views of the recipe) and images/s, per view group and for the
whole image, on the CPU and on CUDA when there is one; the PIL row runs in this one process.
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image

from benchmarks.loader_speed import RECIPES, original_photometric
from sslight.augment import Photometric
from sslight.methods import METHODS
from sslight.table import Table


def device_seconds(groups, batch: int, device: torch.device, repeats: int) -> list[float]:
    """Seconds per batch for each view group, best of ``repeats`` after one warm-up."""
    photometric = Photometric(METHODS["dino"].photometry(groups[0].n, groups[1].n), groups[0].size, device,
                              torch.float32)
    generator = torch.Generator(device=device).manual_seed(0)
    first = [0, groups[0].n]
    views = [torch.randint(0, 256, (g.n, batch, 3, g.size, g.size), dtype=torch.uint8, device=device)
             for g in groups]
    best = []
    for v, f in zip(views, first):
        times = []
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            photometric(v, f, generator)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
        best.append(min(times))
    return best


def pil_seconds(groups, images: int) -> list[float]:
    """Seconds per image for each view group with the per-view PIL ops (no crop: geometry excluded)."""
    transforms = original_photometric(groups)
    gen = torch.Generator().manual_seed(0)
    out, start_view = [], 0
    for g in groups:
        crops = [Image.fromarray(torch.randint(0, 256, (g.size, g.size, 3), dtype=torch.uint8, generator=gen).numpy())
                 for _ in range(images)]
        ts = transforms[start_view:start_view + g.n]
        start = time.perf_counter()
        for crop in crops:
            for t in ts:
                t(crop)
        out.append((time.perf_counter() - start) / images)
        start_view += g.n
    return out


def main(argv: list[str] | None = None) -> Table:
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default="sslight_cnn", choices=sorted(RECIPES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pil-images", type=int, default=32)
    p.add_argument("--csv", default="")
    args = p.parse_args(argv)
    groups = RECIPES[args.recipe]
    table = Table(f"photometric augmentation, {args.recipe}: "
                  + " + ".join(f"{g.n}x{g.size}" for g in groups) + f", batch {args.batch}",
                  ["pipeline", "device", "group", "ms/image", "images/s", "x PIL"])
    pil = pil_seconds(groups, args.pil_images)
    rows = [("PIL per view (original path)", "cpu", pil)]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        per_batch = device_seconds(groups, args.batch, device, args.repeats)
        rows.append(("sslight.augment batched", device.type, [s / args.batch for s in per_batch]))
    pil_total = sum(pil)
    for name, device, seconds in rows:
        for g, s, ref in zip(groups, seconds, pil):
            table.add(name, device, f"{g.n}x{g.size}", 1000 * s, 1 / s, ref / s)
        table.add(name, device, "all views", 1000 * sum(seconds), 1 / sum(seconds), pil_total / sum(seconds))
    return table.emit(args.csv)


if __name__ == "__main__":
    main()
