"""``sslight export``: the student backbone as a timm-loadable safetensors file plus a JSON sidecar.

The file holds exactly the state dict of ``timm.create_model(<timm name>, num_classes=0, **kwargs)``
(no classifier). When the backbone is a plain timm architecture (no small-input stem, or a ViT,
whose small stem is only the ``patch_size`` keyword) timm loads it directly::

    timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path, **pretrained_cfg),
                      num_classes=0, **kwargs)

``pretrained_cfg`` (in the sidecar) tells timm how the backbone saw images: the run's global crop size,
ImageNet mean/std, bicubic resizing, no classifier; ``timm.data.resolve_data_config(model=model)``
then gives the transform that matches.

A CNN with the small-input stem differs from timm's model in layers, not keywords (ResNet: a 3x3
stride-1 conv1 and no max pool; MobileNetV2: stride 1 in the stem and the first 24-channel
block), so :func:`load_timm` builds timm's model, applies the same stem changes, then loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import timm
from safetensors.torch import load_file, save
from torch import nn

from sslight.augment import IMAGENET_MEAN, IMAGENET_STD
from sslight.config import ConfigError
from sslight.eval import trained
from sslight.eval.features import RESIZE_RATIO
from sslight.models import BACKBONES, build_backbone, timm_kwargs


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def direct(spec: dict) -> bool:
    """Whether plain ``timm.create_model`` rebuilds the architecture."""
    return not spec["small_stem"] or spec["model"].startswith("vit")


def pretrained_cfg(image_size: int) -> dict:
    """timm's data config of the backbone: evaluation's geometry (resize, centre crop) and normalisation;
    the same at test time (timm's defaults for the architecture name larger test sizes)."""
    size, crop_pct = (3, image_size, image_size), round(1 / RESIZE_RATIO, 4)
    return dict(input_size=size, test_input_size=size, crop_pct=crop_pct, test_crop_pct=crop_pct,
                interpolation="bicubic", mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD), num_classes=0)


def timm_call(spec: dict, path: Path) -> str:
    """The Python line that rebuilds the exported backbone."""
    if not direct(spec):
        return f"sslight.eval.export.load_timm({str(path)!r})"
    kwargs = "".join(f", {k}={v!r}" for k, v in spec["kwargs"].items())
    overlay = "".join(f", {k}={v!r}" for k, v in spec["pretrained_cfg"].items())
    return (f"timm.create_model({spec['timm_name']!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={str(path)!r}{overlay}), num_classes=0{kwargs})")


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` (temp file + replace), created as any file is: mode 0666 less the
    umask (safetensors' own ``save_file`` makes it 0600, unreadable to the rest of a team)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export(ckpt: str | Path, out: str | Path | None = None) -> tuple[Path, dict]:
    """Writes ``<checkpoint>.backbone.safetensors`` (or ``out``) and its ``.json`` sidecar."""
    run = trained.load(ckpt, ["train.device=cpu"])
    path, cfg, backbone = run.path, run.cfg, run.build()
    out = Path(out) if out else path.with_suffix(".backbone.safetensors")
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {str(out)!r}: expected a .safetensors file name")
    name, small_stem, size = cfg.model.name, bool(cfg.model.small_stem), cfg.views.global_size
    spec = dict(model=name, timm_name=BACKBONES[name].timm_name, kwargs=timm_kwargs(name, small_stem, size),
                small_stem=small_stem, image_size=size, num_features=backbone.num_features,
                pretrained_cfg=pretrained_cfg(size), checkpoint=str(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    write_atomic(out, save(state, metadata={"sslight": json.dumps(spec)}))
    spec["call"] = timm_call(spec, out)
    write_atomic(sidecar(out), (json.dumps(spec, indent=2) + "\n").encode())
    return out, spec


def load_timm(path: str | Path) -> nn.Module:
    """The exported backbone as a timm model (eval mode), small-input stem included."""
    path = Path(path)
    spec = json.loads(sidecar(path).read_text())
    data_cfg = spec.get("pretrained_cfg") or pretrained_cfg(spec["image_size"])  # older exports had none
    if direct(spec):
        model = timm.create_model(spec["timm_name"], pretrained=True, num_classes=0, **spec["kwargs"],
                                  pretrained_cfg_overlay=dict(file=str(path), **data_cfg))
    else:
        model = build_backbone(spec["model"], True, spec["image_size"])
        model.load_state_dict(load_file(str(path)))  # strict: every key and shape must match
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, **data_cfg}  # timm keeps both names
    return model.eval()


def main(ckpt: str, out: str) -> int:
    path, spec = export(ckpt, out or None)
    stem = " with the small-input stem" if spec["small_stem"] else ""
    print(f"exported {spec['model']} ({spec['timm_name']}{stem}, {spec['num_features']}-d features) to {path}")
    print(f"rebuild it with: {spec['call']}")
    if not direct(spec):
        print("  (timm's own model has a different stem; load_timm applies sslight.models.build_backbone's "
              "stem changes to timm.create_model(..., num_classes=0), then loads the file strictly)")
    return 0
