"""``sslight export``: the student backbone as a timm-loadable safetensors file plus a JSON sidecar.

The file holds exactly the state dict of ``timm.create_model(<timm name>, num_classes=0, **kwargs)``
(no classifier). When the backbone is a plain timm architecture (no small-input stem, or a ViT,
whose small stem is only the ``patch_size`` keyword) timm loads it directly::

    timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=0, **kwargs)

A CNN with the small-input stem differs from timm's model in layers, not keywords (ResNet: a 3x3
stride-1 conv1 and no max pool; MobileNetV2: stride 1 in the stem and the first 24-channel
block), so :func:`load_timm` builds timm's model, applies the same stem changes, then loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import timm
from safetensors.torch import load_file, save_file
from torch import nn

from sslight.config import ConfigError
from sslight.eval import trained
from sslight.models import BACKBONES, build_backbone, timm_kwargs


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def direct(spec: dict) -> bool:
    """Whether plain ``timm.create_model`` rebuilds the architecture."""
    return not spec["small_stem"] or spec["model"].startswith("vit")


def timm_call(spec: dict, path: Path) -> str:
    """The Python line that rebuilds the exported backbone."""
    if not direct(spec):
        return f"sslight.eval.export.load_timm({str(path)!r})"
    kwargs = "".join(f", {k}={v!r}" for k, v in spec["kwargs"].items())
    return (f"timm.create_model({spec['timm_name']!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={str(path)!r}), num_classes=0{kwargs})")


def export(ckpt: str | Path, out: str | Path | None = None) -> tuple[Path, dict]:
    """Writes ``<checkpoint>.backbone.safetensors`` (or ``out``) and its ``.json`` sidecar."""
    run = trained.load(ckpt, ["train.device=cpu"])
    path, cfg, backbone = run.path, run.cfg, run.build()
    out = Path(out) if out else path.with_suffix(".backbone.safetensors")
    if out.suffix != ".safetensors":
        raise ConfigError(f"EXPORT_OUT={str(out)!r}: expected a .safetensors file name")
    name, small_stem, size = cfg.model.name, bool(cfg.model.small_stem), cfg.views.global_size
    spec = dict(model=name, timm_name=BACKBONES[name].timm_name, kwargs=timm_kwargs(name, small_stem, size),
                small_stem=small_stem, image_size=size, num_features=backbone.num_features,
                checkpoint=str(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    save_file(state, str(tmp), metadata={"sslight": json.dumps(spec)})
    os.replace(tmp, out)
    spec["call"] = timm_call(spec, out)
    tmp_json = sidecar(out).with_name(f".{sidecar(out).name}.tmp-{os.getpid()}")
    tmp_json.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(tmp_json, sidecar(out))
    return out, spec


def load_timm(path: str | Path) -> nn.Module:
    """The exported backbone as a timm model (eval mode), small-input stem included."""
    path = Path(path)
    spec = json.loads(sidecar(path).read_text())
    if direct(spec):
        model = timm.create_model(spec["timm_name"], pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                  num_classes=0, **spec["kwargs"])
    else:
        model = build_backbone(spec["model"], True, spec["image_size"])
        model.load_state_dict(load_file(str(path)))  # strict: every key and shape must match
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
