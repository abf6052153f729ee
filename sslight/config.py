"""The run configuration: plain dataclasses, dotted overrides, validation.

Every key here is read by the code. Values left as ``"auto"`` are filled by
:func:`sslight.recipes.resolve` (presets, dataset-dependent sizes, the machine) before the
run starts. The names a key may take where things are registered (models, methods, recipes,
loaders) come from those registries, through :func:`sslight.recipes.choices`: the registries
import this module, so it cannot import them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

AUTO = "auto"


class ConfigError(ValueError):
    """A bad configuration value: the message is one line naming key, value and what is allowed."""


@dataclass
class DataConfig:
    path: str = ""  # a folder, a packed dataset (sslight pack) or its URL; "" = CIFAR-10 prepared in $SSLIGHT_DATA
    loader: str = AUTO  # auto = the backend measured fastest here for data of this kind (loaders.registry.choose)
    workers: int | str = AUTO  # auto = this process's share of the cores, one left to the main process
    overlap: bool = True  # a loader that decodes in the training process (nvjpeg on CUDA) runs a batch ahead in a thread
    limit: int = 0  # train on the first N images of a seeded shuffle; 0 = all


@dataclass
class ViewsConfig:
    n_global: int = 2  # global crops per image (the teacher's views)
    global_size: int | str = AUTO  # auto = the image size for small images, else 224
    global_scale: tuple[float, float] = (0.3, 1.0)  # area range of a global crop (of the image); preset by the recipe
    n_local: int = 6  # small local crops per image (the student's extra views); preset by the recipe
    local_size: int | str = 128  # a recipe value is defined for 224 px globals and scaled with them
    local_scale: tuple[float, float] = (0.05, 0.3)  # area range of a local crop (of the image); preset by the recipe
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect-ratio range of every crop


@dataclass
class ModelConfig:
    name: str = "mnv2"  # the backbone
    small_stem: bool | str = AUTO  # auto = on when globals are 64 px or smaller
    drop_path_rate: float | str = AUTO  # stochastic depth of the student (EMA copies drop nothing); auto: ViT 0.1, CNN 0


@dataclass
class LossConfig:
    alpha: float | str = 0.4  # or auto = P_gg / (P_gg + P_gl), the plain average over pairs


@dataclass
class OptimConfig:
    name: str = AUTO  # lars for CNNs, adamw for ViTs
    lr: float | str = AUTO  # base lr per 256 images
    min_lr: float | str = AUTO  # the cosine's end, absolute (not scaled with the batch), as SSLight's
    weight_decay: float | str = AUTO  # at the start of the cosine; auto: CNN 1e-6, ViT 0.04
    weight_decay_end: float | str = AUTO  # at the end of the cosine; auto: CNN 1e-6, ViT 0.4
    warmup_epochs: float = 10.0  # linear lr warm-up, then a cosine to min_lr
    warmup_start: float | str = AUTO  # absolute lr of the first warm-up step (SwAV's start_warmup)
    momentum: float = 0.9  # LARS
    eta: float = 0.001  # LARS trust coefficient
    clip_grad: float = 0.0  # each parameter's gradient norm clipped to this (DINO's clip_gradients); 0 = off


@dataclass
class DinoConfig:
    out_dim: int | str = AUTO  # prototypes of DINO's head; auto: CNN 4096, ViT 65536
    hidden_dim: int = 2048  # DINO head's MLP width
    bottleneck_dim: int = 256  # DINO head's bottleneck before the last layer
    use_bn_in_head: bool | str = AUTO  # BatchNorm in the head's MLP; auto: CNN yes, ViT no
    norm_last_layer: bool | str = AUTO  # the last layer's weight-norm gain fixed at 1; auto: CNN yes, ViT no (trained)
    student_temp: float = 0.1  # softmax temperature of the student
    teacher_temp: float = 0.07  # the teacher's temperature after the warm-up
    warmup_teacher_temp: float = 0.04  # the teacher's temperature at the start, raised linearly
    warmup_teacher_temp_epochs: int | str = AUTO  # epochs of that warm-up; auto: CNN 50, ViT 30
    center_momentum: float = 0.9  # EMA momentum of the teacher's output centre
    momentum_teacher: float = 0.996  # the teacher's EMA momentum at the start, cosine to 1.0
    freeze_last_layer: int = 1  # epochs the head's last layer stays frozen


@dataclass
class SwavConfig:
    hidden_dim: int = 4096  # SwAV head's MLP width
    out_dim: int = 128  # SwAV head's output (prototype space) size
    n_prototypes: int = 3000  # number of prototypes
    temperature: float = 0.1  # softmax temperature of the swapped prediction
    epsilon: float = 0.05  # Sinkhorn-Knopp regularisation
    sinkhorn_iterations: int = 3  # Sinkhorn-Knopp iterations per step
    queue_length: int = 3840  # SSLight's; rounded down to a multiple of the global batch; 0 = no queue
    epoch_queue_starts: int = 15  # the epoch from which the queue is used
    freeze_prototypes_epochs: int = 1  # epochs the prototypes stay frozen


@dataclass
class MocoConfig:
    hidden_dim: int = 2048  # MoCo head's MLP width
    out_dim: int = 128  # MoCo head's output size
    queue_length: int = 65536  # negative keys kept in the queue
    temperature: float = 0.2  # InfoNCE temperature
    momentum: float = 0.999  # the key encoder's EMA momentum


@dataclass
class TeacherConfig:
    """The frozen teacher of rob_dino (sslight/methods/rob_teacher.py)."""

    path: str = ""  # a checkpoint of this project (.pt) or a timm-format backbone (.safetensors)
    head_path: str = ""  # for a .safetensors backbone: the checkpoint with the head and model config


@dataclass
class ProbeConfig:
    enabled: bool = False  # a linear classifier on the detached features, trained alongside, reported each epoch
    lr: float = 0.1  # that classifier's lr


@dataclass
class EvalConfig:
    every: int = 1  # kNN every N epochs and at the end; 0 = only at the end
    k: int = 20  # neighbours of the kNN classifier
    temperature: float = 0.07  # kNN vote weighting temperature
    bank_limit: int = 0  # 0 = the whole train split
    query_limit: int = 0  # 0 = the whole test split
    at_start: bool = False  # also kNN at initialisation, so the end says what training gained


@dataclass
class LinearConfig:
    """The linear probe of ``sslight eval``, trained on cached frozen features."""

    epochs: int = 100  # epochs of the linear probe
    lr: float = 0.1  # base lr per 256 features; SGD, momentum 0.9, cosine
    batch_size: int = 256  # features per batch
    weight_decay: float = 0.0  # of the probe's SGD


@dataclass
class SemisupConfig:
    """Semi-supervised fine-tuning of ``sslight eval``: the whole network on label subsets."""

    percents: str = "1,10"  # label subsets, percent of the train split, class-balanced
    epochs: int = 20  # epochs of fine-tuning per label subset
    lr: float = 0.05  # base lr per 256 images; SGD, Nesterov momentum 0.9, cosine
    batch_size: int = 64  # images per batch
    weight_decay: float = 0.0  # of the fine-tuning's SGD
    subset_seed: int = 0  # which images a subset file holds


@dataclass
class TrainConfig:
    epochs: int = 100  # passes over the (limited) training set
    batch_size: int = 64  # images per step per process (the global batch is this x processes)
    steps: int = 0  # stop after N optimiser steps; 0 = run all epochs
    seed: int = 0  # seeds the weights, the data order, the crops and data.limit's subset
    out: str = AUTO  # the run folder; auto = runs/<model>_<method>_<recipe>[_<schedule>][_<data>][_seed<N>]
    resume: str = ""  # "" = start fresh, auto = newest checkpoint in out, or a path
    overwrite: bool = False  # start afresh in an out folder that holds another run (its checkpoints go once ours is saved)
    device: str = AUTO  # auto = cuda where there is one, else cpu
    compile: bool | str = AUTO  # auto = on for CUDA, off for CPU
    precision: str = AUTO  # auto = bf16 on CUDA; on CPU by its native bf16 and the backbone (precision.py)
    log_every: int = 10  # a log line and a metrics record every N steps
    ckpt_every: int = 0  # extra checkpoint every N steps; 0 = once per epoch
    skip_nonfinite: int = 0  # steps with a non-finite loss whose update may be skipped; 0 = stop at the first
    sync_bn: bool | str = AUTO  # SyncBatchNorm over all processes; auto = on for several CUDA processes


@dataclass
class Config:
    method: str = "dino"  # the self-supervised method
    recipe: str = "sslight"  # the view-sampling recipe: baseline or SSLight's
    schedule: str = "full"  # recipes.SCHEDULES; short: 60,000 images, kNN at start and end (the CPU learning check)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    swav: SwavConfig = field(default_factory=SwavConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    semisup: SemisupConfig = field(default_factory=SemisupConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# keys whose few values are this module's own words, not names of registered things
FIXED_CHOICES = {
    "optim.name": (AUTO, "lars", "adamw"),
    "train.device": (AUTO, "cpu", "cuda"),
    "train.precision": (AUTO, "fp32", "bf16"),
}


# What a resumed run may change: how long it runs, how it logs, evaluates and checkpoints, where
# its files and data are and which machine, loader and process layout run it. Every other key
# defines what the checkpoint means and must match (a prefix ending in "." covers a section).
MAY_CHANGE_ON_RESUME = (
    "train.epochs", "train.steps", "train.out", "train.log_every",
    "train.ckpt_every", "train.skip_nonfinite", "train.device", "train.compile", "train.precision", "train.sync_bn",
    "data.path", "data.loader", "data.workers", "data.overlap", "eval.", "linear.", "semisup.",
)


START_KEYS = ("train.resume", "train.overwrite")  # how this start treats the folder, not the run

# What a run's saved config.json records of the machine that ran it and of its folder: re-used as a
# base elsewhere, these return to their defaults (auto: chosen for this machine), as if never written
RUN_PLACE_KEYS = ("train.device", "train.precision", "train.compile", "train.sync_bn", "data.loader",
                  "data.workers", "data.overlap", "train.out", *START_KEYS)


def all_keys(cfg: Any = None, prefix: str = "") -> dict[str, Any]:
    """Every dotted key with its declared type."""
    cls = type(cfg) if cfg is not None else Config
    hints = typing.get_type_hints(cls)
    keys = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.update(all_keys(getattr(cfg, f.name) if cfg else hints[f.name](), f"{prefix}{f.name}."))
        else:
            keys[prefix + f.name] = hints[f.name]
    return keys


def _closest(word: str, options) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def closest_key(word: str, keys) -> str:
    """A suggestion for an unknown key: the dotted keys that end in it (``lr`` -> ``optim.lr``), else
    the closest spelling."""
    # the training run's keys before those of the `sslight eval` command's probes
    ending = sorted((k for k in keys if k.endswith("." + word)), key=lambda k: k.startswith(("linear.", "semisup.")))
    if not ending:
        return _closest(word, keys)
    also = f" (also {', '.join(ending[1:])})" if ending[1:] else ""
    return f"; did you mean '{ending[0]}'?{also}"


def _parse_bool(key: str, text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}={text!r}: expected a boolean (true/false)")


def parse_value(key: str, text: str, typ: Any) -> Any:
    """Turn the text of an override into the declared type of ``key``."""
    args = typing.get_args(typ)
    if str in args and text.lower() == AUTO:
        return AUTO
    base = next((a for a in args if a is not str), typ) if args and typing.get_origin(typ) is not tuple else typ
    try:
        if typing.get_origin(base) is tuple:
            parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
            if len(parts) != 2:
                raise ValueError
            return tuple(float(p) for p in parts)
        if base is bool:
            return _parse_bool(key, text)
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        kind = {int: "an integer", float: "a number"}.get(base, "a pair 'min,max'")
        extra = " or 'auto'" if str in args else ""
        raise ConfigError(f"{key}={text!r}: expected {kind}{extra}") from None
    return text


def get(cfg: Config, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def set_key(cfg: Config, key: str, value: Any) -> None:
    *path, last = key.split(".")
    obj = cfg
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. views.n_local=10")
    key, text = item.split("=", 1)
    return key.strip(), text.strip()


def apply_overrides(cfg: Config, overrides: list[str], choices: dict[str, tuple[str, ...]]) -> set[str]:
    """Apply ``key=value`` overrides in order, each value checked against its key's type and, for
    the keys in ``choices``, its allowed names; returns the keys that were set."""
    keys = all_keys()
    seen = set()
    for item in overrides:
        key, text = split_override(item)
        if key not in keys:
            raise ConfigError(f"unknown key '{key}'{closest_key(key, keys)}")
        value = parse_value(key, text, keys[key])
        if key in choices and value not in choices[key]:
            raise ConfigError(
                f"{key}={text!r} is not one of {', '.join(choices[key])}{_closest(text, choices[key])}"
            )
        set_key(cfg, key, value)
        seen.add(key)
    return seen


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    """The config saved in a checkpoint; keys added since it was written keep their defaults."""
    cfg = Config()
    for key in all_keys():
        value = data
        for part in key.split("."):
            value = value.get(part, dataclasses.MISSING) if isinstance(value, dict) else dataclasses.MISSING
        if value is not dataclasses.MISSING:
            set_key(cfg, key, tuple(value) if isinstance(value, list) else value)
    return cfg


def flat(data: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: value}, pairs as lists (as JSON has them)."""
    out = {}
    for key, value in json.loads(json.dumps(data)).items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def changes(saved: dict, cfg: Config) -> tuple[list[str], list[str]]:
    """How ``cfg`` differs from a saved run's config, as "key saved -> now" items: (the changes that
    alter what the run means, the changes a resumed run may make). Keys the saved config predates
    are not compared."""
    before, now = flat(saved), flat(to_dict(cfg))
    differing = [k for k in now if k in before and before[k] != now[k] and k not in START_KEYS]
    allowed = [k for k in differing if any(k == m or (m.endswith(".") and k.startswith(m))
                                           for m in MAY_CHANGE_ON_RESUME)]
    describe = lambda k: f"{k} {before[k]!r} -> {now[k]!r}"  # noqa: E731
    return [describe(k) for k in differing if k not in allowed], [describe(k) for k in allowed]


def read_file(path: str) -> dict:
    """A config file: a run's ``config.json`` or a YAML file with the same nested keys (any
    subset of them); a file that cannot be used is a one-line ConfigError naming it. A JSON file is
    a run's record: what it says of that run's machine and folder is left out (RUN_PLACE_KEYS), so
    the new run chooses them afresh; a YAML file is the user's own and every key in it is taken."""
    import yaml  # PyYAML

    try:
        text = open(path).read()
    except OSError as exc:
        raise ConfigError(f"CONFIG={path!r}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"CONFIG={path!r}: not valid {'JSON' if path.endswith('.json') else 'YAML'}{line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"CONFIG={path!r}: expected a mapping of config sections (e.g. 'train:'), "
                          f"got {type(data).__name__}")
    return without_run_place(data) if path.endswith(".json") else data


def without_run_place(data: dict) -> dict:
    """A saved run's nested config less the keys of RUN_PLACE_KEYS."""
    kept = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for key in RUN_PLACE_KEYS:
        section, name = key.split(".")
        if isinstance(kept.get(section), dict):
            kept[section].pop(name, None)
    return kept


def as_overrides(data: dict) -> list[str]:
    """A nested config dict as ``key=value`` overrides, so a file's values meet the same checks of
    keys, types and names as the command line's."""
    items = []
    for key, value in flat(data).items():
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        items.append(f"{key}={value}")
    return items



def label_percents(text: str) -> list[float]:
    """``semisup.percents``: comma-separated percentages of the train split, each in (0, 100]."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(0 < v <= 100 for v in values):
        raise ConfigError(f"semisup.percents={text!r}: expected comma-separated percentages in (0, 100], e.g. 1,10")
    return values


def validate(cfg: Config) -> None:
    """Checks that need no data; raises ConfigError with a one-line message."""
    v = cfg.views

    def scale_ok(key, pair, low=0.0, high=1.0):
        a, b = pair
        if not (low < a <= b <= high):
            raise ConfigError(f"{key}=({a:g}, {b:g}): need {low:g} < min <= max <= {high:g}")

    scale_ok("views.global_scale", v.global_scale)
    scale_ok("views.local_scale", v.local_scale)
    scale_ok("views.ratio", v.ratio, 0.0, 100.0)
    for key in ("views.n_global", "views.n_local"):
        if get(cfg, key) < 0:
            raise ConfigError(f"{key}={get(cfg, key)}: must be >= 0")
    if v.n_global < 2:
        raise ConfigError(f"views.n_global={v.n_global}: {cfg.method} needs at least 2 global views")
    for key in ("views.global_size", "views.local_size"):
        size = get(cfg, key)
        if size != AUTO and size < 8:
            raise ConfigError(f"{key}={size}: must be at least 8 pixels or 'auto'")
    if v.global_size != AUTO and v.local_size != AUTO and v.local_size > v.global_size and v.n_local:
        raise ConfigError(
            f"views.local_size={v.local_size}: must not be larger than views.global_size={v.global_size}"
        )
    alpha = cfg.loss.alpha
    if alpha != AUTO and not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"loss.alpha={alpha}: must be in [0, 1] or 'auto'")
    for key in ("train.steps", "data.workers", "data.limit", "train.ckpt_every",
                "eval.every", "eval.bank_limit", "eval.query_limit", "optim.warmup_epochs",
                "optim.clip_grad", "moco.queue_length", "swav.queue_length", "train.skip_nonfinite"):
        if get(cfg, key) < 0:
            raise ConfigError(f"{key}={get(cfg, key)}: must be >= 0")
    label_percents(cfg.semisup.percents)
    for key in ("linear.weight_decay", "semisup.weight_decay"):
        if get(cfg, key) < 0:
            raise ConfigError(f"{key}={get(cfg, key)}: must be >= 0")
    for key in ("linear.lr", "semisup.lr"):
        if get(cfg, key) <= 0:
            raise ConfigError(f"{key}={get(cfg, key)}: must be > 0")
    for key in ("linear.epochs", "linear.batch_size", "semisup.epochs", "semisup.batch_size"):
        if get(cfg, key) < 1:
            raise ConfigError(f"{key}={get(cfg, key)}: must be >= 1")
    for key in ("train.batch_size", "train.log_every", "eval.k"):
        if get(cfg, key) < 1:
            raise ConfigError(f"{key}={get(cfg, key)}: must be >= 1")
    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs={cfg.train.epochs}: must be >= 1")
    if cfg.train.resume not in ("", AUTO) and not cfg.train.resume.endswith(".pt"):
        raise ConfigError(f"train.resume={cfg.train.resume!r}: expected '', 'auto' or a .pt checkpoint path")
