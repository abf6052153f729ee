"""The frozen teacher of RoB distillation: a pre-trained backbone + DINO head, read from files.

``teacher.path`` is either a checkpoint of this project (``.pt``; its config names the model and
the head dims) or a timm-format backbone (``.safetensors``) whose head and model description come
from such a checkpoint in ``teacher.head_path``. Every problem with these files is a ConfigError,
raised by :func:`load_teacher` while the run is prepared, before it writes anything.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sslight import checkpoint
from sslight.config import Config, ConfigError
from sslight.methods.heads import DinoHead, Encoder
from sslight.models import build_backbone

# The branch of a checkpoint that becomes the teacher: a DINO run's EMA teacher (the branch RoB
# replaces, whose outputs were that run's targets), a RoB run's student.
BRANCH = {"dino": "teacher.", "rob_dino": "student."}


def read_checkpoint(key: str, path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the run's config dict, the teacher branch's state dict) of a checkpoint of this project."""
    if not Path(path).is_file():
        raise ConfigError(f"{key}={path!r}: no such file")
    state = checkpoint.read(Path(path), key)
    config, weights = state["config"], state["method"]
    method = config["method"]
    if method not in BRANCH:
        raise ConfigError(f"{key}={path!r}: a {method} checkpoint has no DINO head; "
                          f"allowed: a checkpoint of {', '.join(BRANCH)}")
    prefix = BRANCH[method]
    return config, {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ConfigError(f"teacher.path={path!r}: no such file")
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exc:
        raise ConfigError(f"teacher.path={path!r}: not a readable safetensors file ({checkpoint.first_line(exc)})") from None


def load_weights(module: nn.Module, weights: dict[str, torch.Tensor], key: str, path: str, model: str) -> None:
    own = module.state_dict()
    problems = [f"missing {k}" for k in sorted(own.keys() - weights.keys())]
    problems += [f"unexpected {k}" for k in sorted(weights.keys() - own.keys())]
    problems += [f"{k} has shape {tuple(weights[k].shape)}, {model} needs {tuple(own[k].shape)}"
                 for k in sorted(own.keys() & weights.keys()) if weights[k].shape != own[k].shape]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{key}={path!r}: does not fit {model}: {problems[0]}{more}")
    module.load_state_dict(weights)


def check_keys(cfg: Config) -> None:
    """rob_dino without a teacher, or a .safetensors backbone without the checkpoint of its head."""
    t = cfg.teacher
    if not t.path:
        raise ConfigError(f"teacher.path='': method {cfg.method} needs a teacher "
                          "(a .pt checkpoint of this project, or a .safetensors backbone with teacher.head_path)")
    if t.path.endswith(".safetensors") and not t.head_path:
        raise ConfigError(f"teacher.head_path='': teacher.path={t.path!r} is a timm backbone; "
                          "the head comes from a .pt checkpoint of this project")
    if t.head_path and not t.path.endswith(".safetensors"):
        raise ConfigError(f"teacher.head_path={t.head_path!r}: only used with a .safetensors teacher.path; "
                          f"{t.path!r} holds its own head")


def load_teacher(cfg: Config) -> Encoder:
    """The frozen teacher (eval mode, no gradients) on the CPU; every error in the teacher keys
    or files as a one-line ConfigError."""
    t = cfg.teacher
    check_keys(cfg)
    timm_file = t.path.endswith(".safetensors")
    head_key, head_file = ("teacher.head_path", t.head_path) if timm_file else ("teacher.path", t.path)
    config, weights = read_checkpoint(head_key, head_file)
    m, d = config["model"], config["dino"]
    if d["out_dim"] != cfg.dino.out_dim:
        raise ConfigError(f"{head_key}={head_file!r}: the teacher's head has out_dim {d['out_dim']}, the "
                          f"student's dino.out_dim is {cfg.dino.out_dim}; set dino.out_dim={d['out_dim']}")
    backbone = build_backbone(m["name"], m["small_stem"], config["views"]["global_size"])
    head = DinoHead(backbone.num_features, d["out_dim"], d["hidden_dim"], d["bottleneck_dim"], d["use_bn_in_head"],
                    d.get("norm_last_layer", True))
    model = f"{m['name']}{' (small stem)' if m['small_stem'] else ''}"
    if timm_file:
        backbone_weights = read_safetensors(t.path)
        # a timm file may carry its classifier; the backbone is built without one (num_classes=0)
        classifier = backbone.pretrained_cfg.get("classifier", "")
        backbone_weights = {k: v for k, v in backbone_weights.items() if not k.startswith(f"{classifier}.")}
        load_weights(backbone, backbone_weights, "teacher.path", t.path, model)
        load_weights(head, {k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")},
                     head_key, head_file, "a DINO head")
        teacher = Encoder(backbone, head)
    else:
        teacher = Encoder(backbone, head)
        load_weights(teacher, weights, head_key, head_file, model)
    return teacher.requires_grad_(False).eval()
