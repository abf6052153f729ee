"""The paper's runs: each `make train CONFIG=configs/... NPROC=8` resolves, key by key, to the
settings of SSLight's own run (../shared/reference/sslight-configs: the script's overrides on its
yaml on defaults.py). The values below are transcribed from those files, not from our presets,
so a preset that drifts fails here."""

from pathlib import Path

import pytest

from sslight.config import flat, read_file, to_dict
from sslight.methods import METHODS
from sslight.methods.pair_loss import pair_counts
from sslight.recipes import Machine, parse, resolve

ROOT = Path(__file__).resolve().parents[1]
EIGHT_GPUS = Machine(cuda=True, cores=96, local_processes=8, processes=8)

# every run: TRAIN.BATCH_SIZE 128 per GPU, SOLVER.TOTAL_EPOCHS 200, TRAIN.JOINT_LINEAR_PROBE (the
# scripts), SEED 0, SOLVER.WARMUP_EPOCHS 10, SOLVER.MOMENTUM 0.9, SOLVER.CLIP_GRAD 0, NMB_CROPS
# [2, n], GLOBAL_CROP_SIZE 224; SyncBatchNorm whenever DISTRIBUTED (the trainer's create_model)
COMMON = {
    "train.epochs": 200, "train.batch_size": 128, "train.seed": 0, "probe.enabled": True,
    "views.n_global": 2, "views.global_size": 224, "views.ratio": [3 / 4, 4 / 3],
    "optim.warmup_epochs": 10.0, "optim.momentum": 0.9, "optim.clip_grad": 0.0, "train.sync_bn": True,
    # SSLight trains in fp32 (USE_FP16 False); ours is bf16 autocast on CUDA, by choice (README)
    "train.precision": "bf16",
}
# MULTI_VIEWS_TRANSFORMS of the *_cnn_baseline / *_cnn_sslight / dino_vit_* yamls; alpha is
# LAMBDAS[0], the weight of the global-global pairs
VIEWS = {
    "cnn_baseline": {"views.global_scale": [0.14, 1.0], "views.local_scale": [0.05, 0.14], "views.n_local": 6,
                     "views.local_size": 96, "alpha": 0.142857},
    "cnn_sslight": {"views.global_scale": [0.3, 1.0], "views.local_scale": [0.05, 0.3], "views.n_local": 6,
                    "views.local_size": 128, "alpha": 0.4},
    "vit_baseline": {"views.global_scale": [0.25, 1.0], "views.local_scale": [0.05, 0.25], "views.n_local": 10,
                     "views.local_size": 96, "alpha": 0.090909},
    "vit_sslight": {"views.global_scale": [0.3, 1.0], "views.local_scale": [0.05, 0.3], "views.n_local": 10,
                    "views.local_size": 128, "alpha": 0.4},
}
# SOLVER, MODEL, DINOHead, DINO, VIT, MOCO, SWAV of each method's yamls (defaults.py where silent)
DINO_CNN = {
    "optim.name": "lars", "optim.lr": 0.48, "optim.min_lr": 0.0048, "optim.warmup_start": 0.0,
    "optim.weight_decay": 1e-6, "optim.weight_decay_end": 1e-6, "model.drop_path_rate": 0.0,
    "dino.out_dim": 4096, "dino.hidden_dim": 2048, "dino.bottleneck_dim": 256, "dino.use_bn_in_head": True,
    "dino.norm_last_layer": True, "dino.student_temp": 0.1, "dino.teacher_temp": 0.07,
    "dino.warmup_teacher_temp": 0.04, "dino.warmup_teacher_temp_epochs": 50, "dino.center_momentum": 0.9,
    "dino.momentum_teacher": 0.996, "dino.freeze_last_layer": 1,
}
DINO_VIT = {
    **DINO_CNN, "optim.name": "adamw", "optim.lr": 0.0005, "optim.min_lr": 0.00001, "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4, "model.drop_path_rate": 0.1, "dino.out_dim": 65536,
    "dino.use_bn_in_head": False, "dino.norm_last_layer": False, "dino.warmup_teacher_temp_epochs": 30,
}
MOCO = {
    "optim.name": "lars", "optim.lr": 0.48, "optim.min_lr": 0.0048, "optim.warmup_start": 0.0,
    "optim.weight_decay": 1e-6, "optim.weight_decay_end": 1e-6, "moco.hidden_dim": 2048, "moco.out_dim": 128,
    "moco.queue_length": 65536, "moco.temperature": 0.2, "moco.momentum": 0.999,
}
SWAV = {
    "optim.name": "lars", "optim.lr": 0.3, "optim.min_lr": 0.0048, "optim.warmup_start": 0.075,
    "optim.weight_decay": 1e-6, "optim.weight_decay_end": 1e-6, "swav.hidden_dim": 4096, "swav.out_dim": 128,
    "swav.n_prototypes": 3000, "swav.temperature": 0.1, "swav.epsilon": 0.05, "swav.sinkhorn_iterations": 3,
    "swav.queue_length": 3840, "swav.epoch_queue_starts": 15, "swav.freeze_prototypes_epochs": 1,
}
# (our config, SSLight's script, its yaml, the model, the method's values, the views)
RUNS = [
    ("dino/mnv2_baseline", "dino_mnv2_baseline.sh", "dino/dino_cnn_baseline.yaml", "mnv2", DINO_CNN, "cnn_baseline"),
    ("dino/mnv2_sslight", "dino_mnv2_sslight.sh", "dino/dino_cnn_sslight.yaml", "mnv2", DINO_CNN, "cnn_sslight"),
    ("dino/r18_baseline", "dino_resnet18_baseline.sh", "dino/dino_cnn_baseline.yaml", "r18", DINO_CNN, "cnn_baseline"),
    ("dino/r18_sslight", "dino_resnet18_sslight.sh", "dino/dino_cnn_sslight.yaml", "r18", DINO_CNN, "cnn_sslight"),
    ("dino/r34_baseline", "dino_resnet34_baseline.sh", "dino/dino_cnn_baseline.yaml", "r34", DINO_CNN, "cnn_baseline"),
    ("dino/r34_sslight", "dino_resnet34_sslight.sh", "dino/dino_cnn_sslight.yaml", "r34", DINO_CNN, "cnn_sslight"),
    ("dino/vit_t16_baseline", "dino_vit_tiny_16_baseline.sh", "dino/dino_vit_baseline.yaml", "vit_t16", DINO_VIT,
     "vit_baseline"),
    ("dino/vit_t16_sslight", "dino_vit_tiny_16_sslight.sh", "dino/dino_vit_sslight.yaml", "vit_t16", DINO_VIT,
     "vit_sslight"),
    ("swav/mnv2_baseline", "swav_mnv2_baseline.sh", "swav/swav_cnn_baseline.yaml", "mnv2", SWAV, "cnn_baseline"),
    ("swav/mnv2_sslight", "swav_mnv2_sslight.sh", "swav/swav_cnn_sslight.yaml", "mnv2", SWAV, "cnn_sslight"),
    ("moco/mnv2_baseline", "moco_mnv2_baseline.sh", "moco/moco_cnn_baseline.yaml", "mnv2", MOCO, "cnn_baseline"),
    ("moco/mnv2_sslight", "moco_mnv2_sslight.sh", "moco/moco_cnn_sslight.yaml", "mnv2", MOCO, "cnn_sslight"),
]
REFERENCE = ROOT.parent / "shared" / "reference" / "sslight-configs"


def mismatches(cfg, expected: dict) -> dict:
    """{key: (ours, SSLight's)} wherever they differ (numbers to float precision)."""
    ours = flat(to_dict(cfg))
    return {k: (ours[k], v) for k, v in expected.items() if ours[k] != pytest.approx(v)}


def resolved_paper_run(name: str):
    path = str(ROOT / "configs" / f"{name}.yaml")
    return resolve(parse(["data.path=/path/to/imagenet"], read_file(path), path), EIGHT_GPUS, image_size=None)


@pytest.mark.parametrize("name, script, yaml, model, method_values, views", RUNS, ids=[r[0] for r in RUNS])
def test_each_paper_run_resolves_to_sslights_settings(name, script, yaml, model, method_values, views):
    if REFERENCE.exists():  # the row names files that exist, and the script uses that yaml
        assert f"exp_yamls/{yaml}" in (REFERENCE / "experiments" / script).read_text()
    cfg = resolved_paper_run(name)
    method = name.split("/")[0]
    expected = {"method": method, "model.name": model, "recipe": views.split("_")[1], **COMMON, **method_values,
                **{k: v for k, v in VIEWS[views].items() if k != "alpha"}}
    assert not mismatches(cfg, expected)
    p_gg, p_gl = pair_counts([0], range(1, 2 + cfg.views.n_local), 2) if method == "moco" else \
        pair_counts(range(2), range(2 + cfg.views.n_local), 2)
    alpha = p_gg / (p_gg + p_gl) if cfg.loss.alpha == "auto" else cfg.loss.alpha
    assert alpha == pytest.approx(VIEWS[views]["alpha"], abs=1e-6)


def test_the_methods_photometry_is_sslights():
    """GAUSSIAN_BLUR_PROB, SOLARIZATION_PROB, COLOR_JITTER_* and GREYSCALE_PROB of the yamls."""
    dino = METHODS["dino"].photometry(2, 6)
    assert [v.blur_p for v in dino[:3]] == [1.0, 0.1, 0.5] and [v.solarize_p for v in dino[:3]] == [0.0, 0.2, 0.0]
    assert METHODS["moco"].photometry(2, 6) == dino
    assert all(v.jitter == (0.4, 0.4, 0.2, 0.1) and v.jitter_p == 0.8 and v.grey_p == 0.2 for v in dino)
    swav = METHODS["swav"].photometry(2, 6)
    assert all(v.jitter == (0.8, 0.8, 0.8, 0.2) and v.blur_p == 0.5 and v.solarize_p == 0.0 for v in swav)


@pytest.mark.parametrize("name, model", [("dino/vit_t32_sslight", "vit_t32"), ("dino/vit_s16_sslight", "vit_s16"),
                                         ("dino/r50_sslight", "r50")])
def test_the_paper_rows_without_an_sslight_script_take_their_familys_settings(name, model):
    cfg = resolved_paper_run(name)
    family = DINO_VIT if model.startswith("vit") else DINO_CNN
    expected = {"model.name": model, **COMMON, **family,
                **{k: v for k, v in VIEWS[f"{'vit' if model.startswith('vit') else 'cnn'}_sslight"].items()
                   if k != "alpha"}}
    assert not mismatches(cfg, expected)
