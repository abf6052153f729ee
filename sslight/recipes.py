"""Method and view-sampling presets (DESIGN.md section 1).

A preset only fills keys the user did not set, so every value stays overridable.
"""

from __future__ import annotations

from sslight.config import AUTO, Config, ConfigError, apply_overrides, set_key, validate

# (recipe, family) -> view sampling and loss weighting
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

REFERENCE_GLOBAL_SIZE = 224


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
            "optim.weight_decay": 1e-6,
            "optim.weight_decay_end": 1e-6,
        })
    else:
        values.update({
            "optim.name": "adamw",
            "optim.lr": 5e-4,
            "optim.weight_decay": 0.04,
            "optim.weight_decay_end": 0.4,
        })
    values.update({
        "dino.out_dim": 4096 if fam == "cnn" else 65536,
        "dino.use_bn_in_head": fam == "cnn",
        "dino.warmup_teacher_temp_epochs": 50 if fam == "cnn" else 30,
    })
    return values


def build_config(overrides: list[str]) -> tuple[Config, set[str]]:
    """Defaults, then the user's choices of method/recipe/model, then presets, then overrides.

    Returns the config and the set of keys the user set explicitly.
    """
    cfg = Config()
    user_keys = apply_overrides(cfg, overrides)  # validates keys, types and choices
    for key, value in preset(cfg).items():
        if key not in user_keys:
            set_key(cfg, key, value)
    if cfg.views.global_size != AUTO:
        scale_recipe_local_size(cfg, user_keys)
    validate(cfg)
    return cfg, user_keys


def scale_recipe_local_size(cfg: Config, user_keys: set[str]) -> None:
    """A recipe's local size is defined for 224 px globals; one the user set is taken as pixels."""
    v = cfg.views
    if "views.local_size" not in user_keys or v.local_size == AUTO:
        at_reference = VIEW_RECIPES[(cfg.recipe, family(cfg.model.name))]["local_size"]
        v.local_size = max(8, round(v.global_size * at_reference / REFERENCE_GLOBAL_SIZE))


def resolve_sizes(cfg: Config, user_keys: set[str], image_size: int | None) -> None:
    """Fill dataset-dependent sizes: small images keep the recipe's ratios (DESIGN.md section 1).

    ``image_size`` is the common side of the dataset's images, or None when they vary.
    """
    v = cfg.views
    if v.global_size == AUTO:
        v.global_size = image_size if image_size and image_size < REFERENCE_GLOBAL_SIZE else REFERENCE_GLOBAL_SIZE
        scale_recipe_local_size(cfg, user_keys)
    if cfg.model.small_stem == AUTO:
        cfg.model.small_stem = v.global_size <= 64
    validate(cfg)


def resolve_runtime(cfg: Config, cuda_available: bool) -> None:
    """Fill device, precision and compile defaults."""
    t = cfg.train
    if t.device == AUTO:
        t.device = "cuda" if cuda_available else "cpu"
    if t.device == "cuda" and not cuda_available:
        raise ConfigError("train.device='cuda': no CUDA device is available; allowed here: auto, cpu")
    if t.precision == AUTO:
        # Measured on the 2-core CPU machine (AVX2, no AVX512-BF16): bf16 autocast makes a
        # training step 10-20x slower than fp32 for both ResNet-18 and MobileNetV2, so the
        # CPU default is fp32; CUDA uses bf16.
        t.precision = "bf16" if t.device == "cuda" else "fp32"
    if t.compile == AUTO:
        t.compile = t.device == "cuda"

