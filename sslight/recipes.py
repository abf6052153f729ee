"""Every preset in one place (view recipes, method presets, the short schedule), and the one
function that resolves a run's config before anything runs (:func:`resolve`).

A preset only fills keys the user did not set, so every value stays overridable.
"""

from __future__ import annotations

import copy
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loaders.registry import BACKENDS, choose
from loaders.shards import is_remote
from sslight.config import AUTO, FIXED_CHOICES, Config, ConfigError, apply_overrides, as_overrides, get, \
    set_key, validate
from sslight.methods import METHODS
from sslight.models import BACKBONES
from sslight.precision import auto_precision, native_bf16_flags, read_cpuinfo

# (recipe, family) -> view sampling and loss weighting (docs/design.md, section 1)
VIEW_RECIPES = {
    ("baseline", "cnn"): dict(global_scale=(0.14, 1.0), local_scale=(0.05, 0.14), n_local=6,
                              local_size=96, alpha=AUTO),
    ("sslight", "cnn"): dict(global_scale=(0.3, 1.0), local_scale=(0.05, 0.3), n_local=6,
                             local_size=128, alpha=0.4),
    ("baseline", "vit"): dict(global_scale=(0.25, 1.0), local_scale=(0.05, 0.25), n_local=10,
                              local_size=96, alpha=AUTO),
    ("sslight", "vit"): dict(global_scale=(0.3, 1.0), local_scale=(0.05, 0.3), n_local=10,
                             local_size=128, alpha=0.4),
}
RECIPES = tuple(dict.fromkeys(recipe for recipe, _ in VIEW_RECIPES))

REFERENCE_GLOBAL_SIZE = 224

# The short schedule (SCHEDULE=short; sweep runs and the CPU learning check): 60,000 images of
# training (a 20,000-image CIFAR-10 subset, 3 epochs) and kNN on the whole train and test splits at
# initialisation and at the end, about 15 minutes for MobileNetV2 or ResNet-18 on 2 cores.
# timm's ImageNet stem: the small-input stem costs 5-12x the compute per 32 px image, and in a
# fixed time more images beat it (BENCHMARKS.md, learning check). Warm-ups and freezes are
# shortened to the run, and LARS's trust coefficient raised to 0.02 as solo-learn's CIFAR configs
# do (with eta 0.001 a weight moves by lr * eta of its norm per step: too slow for a run of a few
# hundred steps at batch 64, while biases and norm parameters move at full lr). SwAV at batch 64
# follows SwAV's own advice for small batches: a queue from the start (60 batches) and the
# prototypes frozen in the first epoch; without them its loss sits at ln(prototypes) within 60
# steps and kNN falls below initialisation. A config file, the user's flags and ARGS override
# these; these override the method presets.
SHORT = [
    "data.limit=20000", "train.epochs=3", "train.batch_size=64", "model.small_stem=false",
    "eval.every=0", "eval.at_start=true", "eval.bank_limit=0", "eval.query_limit=0",
    "optim.eta=0.02", "optim.warmup_epochs=0.5",
    "dino.warmup_teacher_temp_epochs=1", "dino.momentum_teacher=0.99",
    "swav.n_prototypes=300", "swav.queue_length=3840", "swav.epoch_queue_starts=0", "moco.queue_length=4096",
]


# MobileNetV2 on the short schedule: a peak lr of 0.12 per 256 (a quarter of DINO's and MoCo-v2's
# presets) and DINO's teacher at 0.02 throughout. At the presets' lr its features collapse
# dimensionally as the lr peaks (rank 0.1 of the bound) and it ends below its initialisation with
# every method (DINO -8.7); with these it keeps its rank (0.33 or more) and DINO ends near it
# (-0.2 +- 1.9 over three seeds; BENCHMARKS.md).
SHORT_MNV2 = ["optim.lr=0.12", "dino.teacher_temp=0.02", "dino.warmup_teacher_temp=0.02"]

SCHEDULES = {"full": [], "short": SHORT}  # full: the presets' own (the paper's, bar epochs and batch)
BACKBONE_SCHEDULES = {("short", "mnv2"): SHORT_MNV2}  # (schedule, model.name) -> after the schedule's own


def scheduled_values(cfg: Config) -> list[str]:
    """The overrides the run's named schedule sets, its backbone's own after the common ones."""
    return SCHEDULES[cfg.schedule] + BACKBONE_SCHEDULES.get((cfg.schedule, cfg.model.name), [])


def choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of every key that names something, read from where it is registered."""
    return {"method": tuple(METHODS), "recipe": RECIPES, "schedule": tuple(SCHEDULES), "model.name": tuple(BACKBONES),
            "data.loader": (AUTO, *BACKENDS), **FIXED_CHOICES}


def family(model_name: str) -> str:
    return "vit" if model_name.startswith("vit") else "cnn"


def preset(cfg: Config) -> dict[str, object]:
    """The preset values for this method, recipe and backbone family."""
    fam = family(cfg.model.name)
    rec = VIEW_RECIPES[(cfg.recipe, fam)]
    values: dict[str, object] = {
        "views.global_scale": rec["global_scale"],
        "views.local_scale": rec["local_scale"],
        "views.n_local": rec["n_local"],
        "views.local_size": rec["local_size"],
        "loss.alpha": rec["alpha"],
    }
    if fam == "cnn":
        values.update({
            "optim.name": "lars",
            "optim.lr": 0.3 if cfg.method == "swav" else 0.48,
            "optim.min_lr": 0.0048,
            "optim.weight_decay": 1e-6,
            "optim.weight_decay_end": 1e-6,
            "model.drop_path_rate": 0.0,
        })
    else:
        values.update({
            "optim.name": "adamw",
            "optim.lr": 5e-4,
            "optim.min_lr": 1e-5,
            "optim.weight_decay": 0.04,
            "optim.weight_decay_end": 0.4,
            "model.drop_path_rate": 0.1,
        })
    values.update({
        "optim.warmup_start": 0.075 if cfg.method == "swav" else 0.0,
        "dino.out_dim": 4096 if fam == "cnn" else 65536,
        "dino.use_bn_in_head": fam == "cnn",
        "dino.norm_last_layer": fam == "cnn",
        "dino.warmup_teacher_temp_epochs": 50 if fam == "cnn" else 30,
    })
    return values


@dataclass
class Request:
    """A config as asked for: defaults, then a saved config's values, then the overrides; ``given``
    names every key that was set, which presets leave alone."""

    cfg: Config
    given: set[str]
    source: str = ""  # the config file the base came from
    from_file: set[str] = field(default_factory=set)  # the keys it set


def parse(overrides: list[str], base: dict | None = None, source: str = "") -> Request:
    """Keys, types and names checked, of ``base`` (a config file's nested values; its errors name
    ``source``) and of the overrides over it; nothing resolved yet."""
    cfg = Config()
    from_file: set[str] = set()
    if base:
        try:
            from_file = apply_overrides(cfg, as_overrides(base), choices())
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None
    given = from_file | apply_overrides(cfg, overrides, choices())
    return Request(cfg, given, source, from_file)


@dataclass(frozen=True)
class Machine:
    """What the machine that runs offers, as far as resolving a config asks: CUDA, the cores this
    process may use, the processes that share them (torchrun's LOCAL_WORLD_SIZE), and the CPU's
    native bf16 flags."""

    cuda: bool
    cores: int = 1
    local_processes: int = 1
    processes: int = 1  # in the whole run (torchrun's WORLD_SIZE)
    native_bf16: tuple[str, ...] = ()

    @staticmethod
    def here() -> "Machine":
        return Machine(cuda=torch.cuda.is_available(), cores=len(os.sched_getaffinity(0)),
                       local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                       processes=int(os.environ.get("WORLD_SIZE", "1")),
                       native_bf16=tuple(native_bf16_flags(read_cpuinfo())))

    @property
    def workers(self) -> int:
        """Loader workers per process: its share of the cores, less one for the main process,
        which runs the training step (and photometry) beside them; at least one."""
        return max(1, self.cores // self.local_processes - 1)

    def device(self, requested: str) -> str:
        if requested == AUTO:
            return "cuda" if self.cuda else "cpu"
        if requested == "cuda" and not self.cuda:
            raise ConfigError("train.device='cuda': no CUDA device is available; allowed here: auto, cpu")
        return requested


def resolve(request: Request, machine: Machine, image_size: int | None = None) -> Config:
    """The run's config with every auto value filled: the named schedule's values, then the presets,
    then the sizes for images of side ``image_size`` (None when they vary or are not known yet),
    then the machine's defaults; validated once."""
    cfg, given = copy.deepcopy(request.cfg), set(request.given)
    scheduled = Config()
    for key in apply_overrides(scheduled, scheduled_values(cfg), choices()) - given:
        set_key(cfg, key, get(scheduled, key))
        given.add(key)  # a schedule's value is not the presets' to change
    for key, value in preset(cfg).items():
        if key not in given:
            set_key(cfg, key, value)
    resolve_sizes(cfg, given, image_size)
    t = cfg.train
    t.device = machine.device(t.device)
    if cfg.data.loader == AUTO:
        cfg.data.loader = choose(t.device == "cuda", image_size, is_remote(cfg.data.path))[0]
    if cfg.data.workers == AUTO:
        cfg.data.workers = machine.workers
    if t.precision == AUTO:
        t.precision = machine_precision(cfg, machine)[0]
    if t.compile == AUTO:
        t.compile = t.device == "cuda"
    if t.sync_bn == AUTO:
        # as SSLight and DINO: batch statistics over the global batch whenever several GPUs train
        t.sync_bn = t.device == "cuda" and machine.processes > 1
    if t.out == AUTO:
        t.out = default_out(cfg)
    try:
        validate(cfg)
    except ConfigError as exc:  # a bad value the config file gave: name the file too
        if request.source and str(exc).split("=", 1)[0] in request.from_file:
            raise ConfigError(f"{request.source}: {exc}") from None
        raise
    return cfg


def default_out(cfg: Config) -> str:
    """``runs/<model>_<method>_<recipe>``, and what else sets two runs of default folders apart: a
    schedule other than full, a dataset other than CIFAR-10 (its folder's or URL's name), a seed other than 0;
    so the quick start's short run and the full run it leads to do not meet in one folder."""
    parts = [cfg.model.name, cfg.method, cfg.recipe]
    if cfg.schedule != "full":
        parts.append(cfg.schedule)
    if is_remote(cfg.data.path):  # a packed dataset's URL: its last path part, else its host
        url = urllib.parse.urlsplit(cfg.data.path)
        parts.append(re.sub(r"[^\w.-]+", "-", url.path.rstrip("/").rsplit("/", 1)[-1] or url.hostname or "data"))
    elif cfg.data.path:
        parts.append(Path(cfg.data.path).resolve().name)
    if cfg.train.seed:
        parts.append(f"seed{cfg.train.seed}")
    return "runs/" + "_".join(parts)


def machine_precision(cfg: Config, machine: Machine) -> tuple[str, str]:
    """(precision, why) that ``train.precision=auto`` takes for this device and backbone."""
    return auto_precision(cfg.train.device == "cuda", list(machine.native_bf16), BACKBONES[cfg.model.name].depthwise)


def auto_notes(request: Request, cfg: Config, machine: Machine, image_size: int | None) -> list[str]:
    """What ``auto`` chose for the data path and the precision, and why, said once when a run starts."""
    notes = []
    if request.cfg.train.precision == AUTO:
        notes.append(f"precision: {cfg.train.precision} (auto: {machine_precision(cfg, machine)[1]})")
    if request.cfg.data.loader == AUTO:
        notes.append(f"loader: {cfg.data.loader} (auto: {choose(cfg.train.device == 'cuda', image_size, is_remote(cfg.data.path))[1]})")
    if request.cfg.data.workers == AUTO:
        notes.append(f"workers: {cfg.data.workers} (auto: {machine.cores} cores for {machine.local_processes} "
                     "process(es), one left to each main process)")
    return notes


def resolve_sizes(cfg: Config, given: set[str], image_size: int | None) -> None:
    """Small images keep the recipe's ratios (docs/design.md, section 1): the global size is the
    image's, and a recipe's local size, defined for 224 px globals, scales with it; a local size
    the user set is taken as pixels."""
    v = cfg.views
    if v.global_size == AUTO:
        v.global_size = image_size if image_size and image_size < REFERENCE_GLOBAL_SIZE else REFERENCE_GLOBAL_SIZE
    if "views.local_size" not in given or v.local_size == AUTO:
        at_reference = VIEW_RECIPES[(cfg.recipe, family(cfg.model.name))]["local_size"]
        v.local_size = max(8, round(v.global_size * at_reference / REFERENCE_GLOBAL_SIZE))
    if cfg.model.small_stem == AUTO:
        cfg.model.small_stem = v.global_size <= 64


def build_config(overrides: list[str], image_size: int | None = None) -> Config:
    """:func:`resolve` of ``overrides`` on this machine, for callers that have no dataset at hand
    (a sweep checking its runs, tests)."""
    return resolve(parse(overrides), Machine.here(), image_size)
