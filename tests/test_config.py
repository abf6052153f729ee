"""Bad input fails before any work: one line naming key, value and what is allowed; exit 2."""

import subprocess
import sys

import pytest

from sslight.cli import main
from sslight.config import ConfigError, to_dict, from_dict
from sslight.recipes import build_config


@pytest.mark.parametrize("args, expected", [
    (["views.n_locals=10"], "unknown key 'views.n_locals'; did you mean 'views.n_local'?"),
    (["--model", "foo"], "--model 'foo' is not one of mnv2, r18, r34, r50, vit_t16, vit_t32, vit_s16"),
    (["--model", "r19"], "did you mean 'r18'?"),
    (["--method", "dinno"], "did you mean 'dino'?"),
    (["views.global_scale=0.9,0.3"], "views.global_scale=(0.9, 0.3): need 0 < min <= max <= 1"),
    (["views.global_size=64", "views.local_size=96"],
     "views.local_size=96: must not be larger than views.global_size=64"),
    (["--epochs", "-1"], "--epochs -1: must be >= 1"),
    (["--data", "/nonexistent/data"], "--data '/nonexistent/data': no such folder"),
    (["loss.alpha=1.5"], "loss.alpha=1.5: must be in [0, 1] or 'auto'"),
    (["train.batch_size=many"], "train.batch_size='many': expected an integer"),
    (["views.n_local"], "expected key=value"),
])
def test_bad_input_one_line_exit_2(args, expected, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_resume_checkpoint(cifar_small, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(cifar_small), "--out", str(out), "--resume", str(tmp_path / "x.pt")])
    assert code == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    assert not out.exists()


def test_cli_process_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sslight", "train", "--model", "foo"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("sslight: error: --model 'foo'")


def test_presets_follow_recipe_and_family():
    cfg = build_config(["recipe=baseline", "model.name=r18"])
    assert cfg.views.global_scale == (0.14, 1.0) and cfg.views.local_scale == (0.05, 0.14)
    assert cfg.loss.alpha == "auto" and cfg.optim.name == "lars" and cfg.optim.lr == 0.48
    cfg = build_config(["model.name=vit_t16"])
    assert cfg.views.n_local == 10 and cfg.loss.alpha == 0.4 and cfg.optim.name == "adamw"
    assert cfg.dino.out_dim == 65536 and cfg.dino.warmup_teacher_temp_epochs == 30
    cfg = build_config(["method=swav"])
    assert cfg.optim.lr == 0.3


def test_overrides_beat_presets():
    cfg = build_config(["views.n_local=10", "optim.lr=0.3", "loss.alpha=auto", "views.global_scale=(0.2,0.9)"])
    assert (cfg.views.n_local, cfg.optim.lr, cfg.loss.alpha) == (10, 0.3, "auto")
    assert cfg.views.global_scale == (0.2, 0.9)


def test_small_images_keep_recipe_ratios():
    cfg = build_config([], image_size=32)
    assert (cfg.views.global_size, cfg.views.local_size) == (32, round(32 * 128 / 224))
    assert cfg.model.small_stem is True
    cfg = build_config(["views.local_size=12"], image_size=32)
    assert cfg.views.local_size == 12
    cfg = build_config(["recipe=baseline"], image_size=None)
    assert (cfg.views.global_size, cfg.views.local_size, cfg.model.small_stem) == (224, 96, False)


def test_resolved_config_round_trips():
    cfg = build_config(["views.n_local=8"])
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


def test_config_error_is_one_line():
    with pytest.raises(ConfigError):
        build_config(["views.local_scale=0.5,0.1"])


def resolved(overrides, machine, image_size):
    from sslight.recipes import Machine, parse, resolve

    return resolve(parse(overrides), Machine(**machine), image_size)


@pytest.mark.parametrize("machine, image_size, loader", [
    (dict(cuda=True, cores=16), 224, "nvjpeg"),
    (dict(cuda=True, cores=16), 32, "nvjpeg"),  # the GPU decodes whatever the size
    (dict(cuda=False, cores=2), 224, "nvjpeg"),
    (dict(cuda=False, cores=2), None, "nvjpeg"),  # sizes vary: ImageNet-like
])
def test_auto_loader_follows_the_machine_and_the_data(machine, image_size, loader):
    assert resolved([], machine, image_size).data.loader == loader


def test_auto_loader_on_small_images_takes_dali_where_installed(monkeypatch):
    from loaders import registry

    monkeypatch.setattr(registry, "missing", lambda name: None)
    assert resolved([], dict(cuda=False), 32).data.loader == "dali"
    monkeypatch.setattr(registry, "missing", lambda name: "pip install it" if name == "dali" else None)
    assert resolved([], dict(cuda=False), 32).data.loader == "nvjpeg"


@pytest.mark.parametrize("cores, processes, workers", [(2, 1, 1), (16, 1, 15), (16, 4, 3), (8, 8, 1), (1, 1, 1)])
def test_auto_workers_share_the_cores_between_processes(cores, processes, workers):
    assert resolved([], dict(cuda=False, cores=cores, local_processes=processes), 32).data.workers == workers


def test_a_users_loader_and_workers_win():
    cfg = resolved(["data.loader=pil", "data.workers=5"], dict(cuda=True, cores=64), 224)
    assert (cfg.data.loader, cfg.data.workers) == ("pil", 5)


def test_the_machine_counts_the_cores_this_process_may_use(monkeypatch):
    from sslight.recipes import Machine

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})  # fewer than os.cpu_count()
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert Machine.here().cores == 3 and Machine.here().workers == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert Machine.here().workers == 3


def test_the_auto_choices_are_recorded_and_said_once(cifar_small, tmp_path, capsys):
    import json

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data", str(cifar_small), "--steps", "1", "--batch", "8",
                 "eval.every=0", "eval.bank_limit=20", "eval.query_limit=10", "dino.out_dim=256",
                 "dino.hidden_dim=128", "dino.bottleneck_dim=32"]) == 0
    saved = json.loads((out / "config.json").read_text())["data"]
    err = capsys.readouterr().err
    assert saved["loader"] != "auto" and isinstance(saved["workers"], int)
    assert err.count(f"loader: {saved['loader']} (auto: ") == 1
    assert err.count(f"workers: {saved['workers']} (auto: ") == 1


def test_a_run_repeated_from_its_config_json_resolves_to_the_same_config(cifar_small, tmp_path):
    import json

    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "--out", str(first), "--data", str(cifar_small), "--model", "r18", "--steps", "1",
                 "--batch", "8", "views.n_local=2", "eval.every=0", "eval.bank_limit=20", "eval.query_limit=10",
                 "dino.out_dim=256", "dino.hidden_dim=128", "dino.bottleneck_dim=32"]) == 0
    assert main(["train", "--config", str(first / "config.json"), "--out", str(second)]) == 0
    a, b = (json.loads((run / "config.json").read_text()) for run in (first, second))
    assert a["train"].pop("out") != b["train"].pop("out")
    assert a == b


@pytest.mark.parametrize("text, message", [
    ("views:\n  n_locals: 10\n", "unknown key 'views.n_locals'; did you mean 'views.n_local'?"),
    ("train:\n  epochs: many\n", "train.epochs='many': expected an integer"),
    ("model:\n  name: resnet\n", "model.name='resnet' is not one of mnv2"),
    ("views:\n  n_local: -1\n", "views.n_local=-1: must be >= 0"),
    ("views: [1, 2\n", "not valid YAML at line"),
    ("- just\n- a list\n", "expected a mapping of config sections"),
])
def test_a_bad_config_file_is_one_line_naming_the_file(tmp_path, capsys, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert str(path) in err
    assert not out.exists()


def test_pretrain_from_python_goes_through_the_cli_path(cifar_small, tmp_path):
    import sslight

    path = tmp_path / "short.yaml"
    path.write_text("views:\n  n_local: 2\ndino:\n  out_dim: 256\n  hidden_dim: 128\n  bottleneck_dim: 32\n")
    summary = sslight.pretrain(config=str(path), data=str(cifar_small), out=str(tmp_path / "run"), steps=1, batch=8,
                               overrides={"eval.bank_limit": 20, "eval.query_limit": 10, "data.workers": 0})
    assert summary["steps"] == 1 and 0 <= summary["knn_top1"] <= 100
    with pytest.raises(ConfigError, match="pretrain\\(epoch=...\\): not a flag"):
        sslight.pretrain(epoch=3)
    with pytest.raises(ConfigError, match="unknown key 'views.n_locals'"):
        sslight.pretrain(overrides=["views.n_locals=3"])


def test_the_short_schedule_fills_what_the_user_leaves_and_beats_the_presets():
    from sslight.config import get, parse_value, all_keys, split_override
    from sslight.recipes import SHORT

    cfg = build_config(["schedule=short", "method=swav"])
    keys = all_keys()
    for item in SHORT:
        key, text = split_override(item)
        assert get(cfg, key) == parse_value(key, text, keys[key]), key
    assert cfg.eval.at_start is True
    mine = build_config(["schedule=short", "train.epochs=7", "data.limit=100"])
    assert (mine.train.epochs, mine.data.limit) == (7, 100)  # the user's values win
    assert build_config([]).eval.at_start is False and build_config([]).train.epochs == 100


def test_mobilenetv2_has_its_own_short_schedule_values_and_the_user_still_wins():
    from sslight.recipes import SHORT_MNV2

    assert SHORT_MNV2
    mnv2 = build_config(["schedule=short", "model.name=mnv2"])
    r18 = build_config(["schedule=short", "model.name=r18"])
    assert (mnv2.optim.lr, mnv2.dino.teacher_temp, mnv2.dino.warmup_teacher_temp) == (0.12, 0.02, 0.02)
    assert (r18.optim.lr, r18.dino.teacher_temp, r18.dino.warmup_teacher_temp) == (0.48, 0.07, 0.04)
    assert build_config(["schedule=full", "model.name=mnv2"]).optim.lr == 0.48
    assert build_config(["schedule=short", "model.name=mnv2", "optim.lr=0.3"]).optim.lr == 0.3


def test_an_unknown_schedule_lists_the_schedules():
    with pytest.raises(ConfigError, match="schedule='long' is not one of full, short"):
        build_config(["schedule=long"])


SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_native_bf16_is_read_from_the_cpu_flags():
    from sslight.precision import native_bf16_flags, read_cpuinfo

    assert native_bf16_flags(SAPPHIRE_RAPIDS) == ["avx512_bf16", "amx_bf16"]
    assert native_bf16_flags("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n") == []
    assert native_bf16_flags("model name\t: avx512_bf16 in a name is no flag\n") == []
    assert native_bf16_flags("") == []
    assert isinstance(native_bf16_flags(read_cpuinfo()), list)  # this machine's own text parses


@pytest.mark.parametrize("machine, model, precision, why", [
    (dict(cuda=True), "mnv2", "bf16", "CUDA"),
    (dict(cuda=False), "r18", "fp32", "this CPU has no native bf16"),
    (dict(cuda=False), "vit_t16", "fp32", "this CPU has no native bf16"),
    (dict(cuda=False, native_bf16=("avx512_bf16",)), "r18", "bf16", "this CPU has native bf16 (avx512_bf16)"),
    (dict(cuda=False, native_bf16=("avx512_bf16", "amx_bf16")), "vit_t16", "bf16", "native bf16 (avx512_bf16, amx"),
    (dict(cuda=False, native_bf16=("amx_bf16",)), "mnv2", "fp32", "depthwise convolutions are slower in bf16"),
])
def test_auto_precision_follows_the_cpus_native_bf16_and_the_backbone_and_says_why(machine, model, precision, why):
    from sslight.recipes import Machine, auto_notes, parse

    request = parse([f"model.name={model}"])
    cfg = resolved([f"model.name={model}"], machine, 32)
    assert cfg.train.precision == precision
    notes = [n for n in auto_notes(request, cfg, Machine(**machine), 32) if n.startswith("precision: ")]
    assert len(notes) == 1 and notes[0].startswith(f"precision: {precision} (auto: ") and why in notes[0]
    assert resolved([f"model.name={model}", "train.precision=fp32"], machine, 32).train.precision == "fp32"
    assert not [n for n in auto_notes(parse(["train.precision=fp32"]), cfg, Machine(**machine), 32)
                if n.startswith("precision: ")]


@pytest.mark.parametrize("overrides, out", [
    ([], "runs/mnv2_dino_sslight"),
    (["model.name=r18", "schedule=short"], "runs/r18_dino_sslight_short"),
    (["method=swav", "recipe=baseline", "train.seed=2"], "runs/mnv2_swav_baseline_seed2"),
    (["data.path=/data/flowers/"], "runs/mnv2_dino_sslight_flowers"),
    (["data.path=https://host:8080/packs/imagenet/"], "runs/mnv2_dino_sslight_imagenet"),
    (["data.path=http://127.0.0.1:8000/"], "runs/mnv2_dino_sslight_127.0.0.1"),
    (["train.out=elsewhere", "schedule=short"], "elsewhere"),
])
def test_the_default_out_sets_apart_runs_that_differ_in_schedule_data_or_seed(overrides, out):
    assert build_config(overrides).train.out == out


@pytest.mark.parametrize("key, suggestion", [
    ("lr", "did you mean 'optim.lr'? (also probe.lr, linear.lr, semisup.lr)"),
    ("n_local", "did you mean 'views.n_local'?"),
    ("epochs", "did you mean 'train.epochs'? (also linear.epochs, semisup.epochs)"),
    ("optim.lrr", "did you mean 'optim.lr'?"),
])
def test_a_bare_or_misspelt_key_suggests_the_dotted_one(key, suggestion):
    with pytest.raises(ConfigError, match=f"unknown key '{key}'; " + suggestion.replace("(", r"\(")
                       .replace(")", r"\)").replace("?", r"\?")):
        build_config([f"{key}=1"])


def test_a_cpu_runs_config_json_resolved_on_a_cuda_machine_takes_the_cuda_side_values(tmp_path):
    import json

    from sslight.config import read_file
    from sslight.recipes import Machine, parse, resolve

    cpu = resolve(parse(["model.name=r18", "views.n_local=4", "train.out=runs/trial"]), Machine(cuda=False, cores=2), 32)
    assert (cpu.train.device, cpu.train.compile, cpu.data.workers, cpu.train.precision) == ("cpu", False, 1, "fp32")
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(to_dict(cpu)))
    gpu_machine = Machine(cuda=True, cores=16, local_processes=2, processes=2)

    again = resolve(parse([], read_file(str(saved)), str(saved)), gpu_machine, 32)
    assert (again.train.device, again.train.compile, again.train.precision) == ("cuda", True, "bf16")
    assert (again.data.loader, again.data.workers, again.train.sync_bn) == ("nvjpeg", 7, True)
    assert again.train.out == "runs/r18_dino_sslight"  # a new folder, not the trial's
    assert (again.model.name, again.views.n_local) == ("r18", 4)  # what the run means is kept

    mine = resolve(parse(["train.device=cpu", "data.workers=3", "train.out=runs/mine"], read_file(str(saved)),
                         str(saved)), gpu_machine, 32)
    assert (mine.train.device, mine.data.workers, mine.train.out) == ("cpu", 3, "runs/mine")  # the user's flags win

    own = tmp_path / "cpu.yaml"  # a YAML file is the user's own: its machine keys are taken
    own.write_text("train:\n  device: cpu\n")
    assert resolve(parse([], read_file(str(own)), str(own)), gpu_machine, 32).train.device == "cpu"
