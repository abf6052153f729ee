"""Evaluation: kNN, linear probe on cached features, label subsets, timm export."""

import json
from collections import Counter

import pytest
import timm
import torch
from safetensors.torch import load_file

from loaders.datasets import Split, load_dataset
from sslight import config as config_mod
from sslight.checkpoint import save_atomic
from sslight.cli import main
from sslight.config import ConfigError, LinearConfig
from sslight.eval.export import load_timm
from sslight.eval.features import EvalImages
from sslight.eval.knn import knn_accuracies, knn_top1
from sslight.eval.linear import train_linear
from sslight.eval.run import evaluate_checkpoint, parse_tasks
from sslight.eval.subsets import label_subset
from sslight.models import build_backbone
from sslight.recipes import build_config


def test_knn_toy_features_known_answer():
    # Unit vectors at angles (degrees): the nearest bank point is class 1, the next two class 0.
    def at(*degrees):
        r = torch.tensor(degrees, dtype=torch.float64).deg2rad()
        return torch.stack([r.cos(), r.sin()], 1).float()

    bank, bank_labels = at(5, 10, 12, 90, 95), torch.tensor([1, 0, 0, 1, 1])
    queries, query_labels = at(4, 93), torch.tensor([0, 1])
    accs = knn_accuracies(bank, bank_labels, queries, query_labels, [1, 3], 0.07, 2)
    # k=1: the first query takes its single neighbour's wrong class; k=3: exp(cos/T) weights of
    # the two class-0 points (1.80 x the class-1 weight) outvote it. The second is right both times.
    assert accs == {1: 50.0, 3: 100.0}
    assert knn_top1(bank, bank_labels, queries, query_labels, 3, 0.07, 2) == 100.0


def make_checkpoint(path, overrides, perturb_norms=False):
    """A checkpoint as training writes it (student backbone + resolved config), random weights."""
    cfg = build_config(overrides)
    torch.manual_seed(0)
    backbone = build_backbone(cfg.model.name, cfg.model.small_stem, cfg.views.global_size)
    if perturb_norms:  # running statistics are buffers: the export must carry them too
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {f"student.backbone.{k}": v for k, v in backbone.state_dict().items()}
    save_atomic(dict(method=state, config=config_mod.to_dict(cfg)), path)
    return backbone.eval()


def test_linear_probe_on_cache_matches_training_without_cache(cifar_small, tmp_path):
    ckpt = tmp_path / "ckpt-e0001-s00000001.pt"
    # timm's plain MobileNetV2 stem on 32 px images: a few MFLOPs per image, the test stays fast
    backbone = make_checkpoint(ckpt, ["model.name=mnv2", "model.small_stem=false", f"data.path={cifar_small}",
                                      "views.global_size=32", "data.workers=0"])
    overrides = ["linear.epochs=3", "linear.batch_size=32", "eval.bank_limit=100"]
    cached = evaluate_checkpoint(ckpt, overrides, ["linear"])["linear"]
    cache_files = sorted((tmp_path / "features").iterdir())
    assert len(cache_files) == 3  # train, train flipped, test
    stamps = [f.stat().st_mtime_ns for f in cache_files]
    assert evaluate_checkpoint(ckpt, overrides, ["linear"])["linear"] == cached
    assert [f.stat().st_mtime_ns for f in cache_files] == stamps  # read, not rewritten

    # the same classifier, features computed from the images at every step
    dataset = load_dataset(str(cifar_small))
    train_split = dataset.train.subset(100, 0)
    images = torch.stack([EvalImages(train_split, 32, flip)[i][0] for flip in (False, True)
                          for i in range(len(train_split))])
    labels = torch.tensor(train_split.labels * 2)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def features(x):
        with torch.no_grad():
            return backbone(((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last))

    head = train_linear(lambda idx: features(images[idx]), labels, backbone.num_features, 10,
                        LinearConfig(epochs=3, batch_size=32), seed=0)
    test_images = torch.stack([EvalImages(dataset.test, 32)[i][0] for i in range(len(dataset.test))])
    with torch.no_grad():
        top1 = 100 * (head(features(test_images)).argmax(1) == torch.tensor(dataset.test.labels)).float().mean()
    assert abs(top1.item() - cached["top1"]) <= 1.0  # at most one of the 100 test images differs


def test_cache_key_follows_dataset(cifar_small, tmp_path):
    ckpt = tmp_path / "ckpt-e0001-s00000001.pt"
    make_checkpoint(ckpt, ["model.name=mnv2", "model.small_stem=false", f"data.path={cifar_small}",
                           "views.global_size=32", "data.workers=0"])
    evaluate_checkpoint(ckpt, ["eval.bank_limit=50", "eval.query_limit=20"], ["knn"])
    evaluate_checkpoint(ckpt, ["eval.bank_limit=60", "eval.query_limit=20"], ["knn"])
    assert len(list((tmp_path / "features").iterdir())) == 3  # two train subsets, one test subset
    result = json.loads((tmp_path / "eval-ckpt-e0001-s00000001.json").read_text())
    assert list(result["knn"]) == ["10", "20", "60"] and result["train_images"] == 60  # k 100, 200 clipped


def test_semisup_fine_tunes_the_whole_network_on_the_subset_file(cifar_small, tmp_path):
    ckpt = tmp_path / "ckpt-e0001-s00000001.pt"
    backbone = make_checkpoint(ckpt, ["model.name=mnv2", "model.small_stem=false", f"data.path={cifar_small}",
                                      "views.global_size=32", "data.workers=0"])
    cfg = ["semisup.percents=10", "semisup.epochs=1", "semisup.batch_size=8", "eval.query_limit=20"]
    result = evaluate_checkpoint(ckpt, cfg, ["semisup"])["semisup"]["10"]
    subset, path = label_subset(load_dataset(str(cifar_small)), 10, seed=0)
    assert result["subset_file"] == str(path) and result["images"] == len(subset) == 20
    assert 0 <= result["top1"] <= result["top5"] <= 100

    from sslight.eval.finetune import finetune
    from sslight.eval.trained import load

    trained = load(ckpt, cfg)
    tuned = trained.build()
    finetune(tuned, subset, load_dataset(str(cifar_small)).test.subset(20, 0), 10, trained.cfg)
    before, after = backbone.state_dict(), tuned.state_dict()
    assert not torch.equal(before["conv_stem.weight"], after["conv_stem.weight"])  # the stem learns too


def test_bad_eval_input_is_a_config_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="knn,linear,semisup"):
        parse_tasks("knn,probe")
    with pytest.raises(ConfigError, match="semisup.percents"):
        build_config(["semisup.percents=0,10"])
    assert main(["eval", "--ckpt", str(tmp_path / "missing.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_label_subsets_are_deterministic_and_class_balanced(cifar_small):
    dataset = load_dataset(str(cifar_small))  # 20 train images per class
    subset, path = label_subset(dataset, 10, seed=0)
    assert Counter(subset.labels) == {c: 2 for c in range(10)}
    written = path.read_text()
    assert len(written.splitlines()) == 20
    # redrawn from a shuffled listing (file gone): the same images
    path.unlink()
    order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(1)).tolist()
    dataset.train = Split([dataset.train.files[i] for i in order], [dataset.train.labels[i] for i in order])
    again, _ = label_subset(dataset, 10, seed=0)
    assert path.read_text() == written and sorted(again.files) == sorted(subset.files)
    one, _ = label_subset(dataset, 1, seed=0)
    assert Counter(one.labels) == {c: 1 for c in range(10)}  # at least one image per class
    other, _ = label_subset(dataset, 10, seed=1)
    assert sorted(other.files) != sorted(subset.files)


@pytest.mark.parametrize("model, small_stem", [("r18", True), ("mnv2", True), ("r18", False), ("vit_t16", True)])
def test_export_round_trip_through_timm(tmp_path, model, small_stem):
    size = 32 if small_stem else 64
    ckpt = tmp_path / "ckpt-e0001-s00000001.pt"
    backbone = make_checkpoint(ckpt, [f"model.name={model}", f"model.small_stem={small_stem}",
                                      f"views.global_size={size}"], perturb_norms=True)
    assert main(["export", "--ckpt", str(ckpt)]) == 0
    path = tmp_path / "ckpt-e0001-s00000001.backbone.safetensors"
    spec = json.loads(path.with_suffix(".json").read_text())
    x = torch.randn(2, 3, size, size)
    loaded = load_timm(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), backbone(x))
    saved = load_file(str(path))
    assert saved.keys() == loaded.state_dict().keys()
    if spec["call"].startswith("timm.create_model"):
        # the documented call, and the strict form of it (fails on any missing or unexpected key)
        for overlay in (dict(file=str(path)), dict(file=str(path), num_classes=0)):
            direct = timm.create_model(spec["timm_name"], pretrained=True, pretrained_cfg_overlay=overlay,
                                       num_classes=0, **spec["kwargs"]).eval()
            with torch.no_grad():
                assert torch.equal(direct(x), backbone(x))
    else:  # why load_timm exists: timm's own model has another stem
        def plain():
            return timm.create_model(spec["timm_name"], pretrained=True, num_classes=0,
                                     pretrained_cfg_overlay=dict(file=str(path), num_classes=0)).eval()

        if model == "r18":
            with pytest.raises(RuntimeError, match="size mismatch"):
                plain()
        else:  # MobileNetV2: the same shapes, other strides
            with torch.no_grad():
                assert plain()(x).shape == backbone(x).shape and not torch.allclose(plain()(x), backbone(x))


def address_space_kib() -> int:
    status = open("/proc/self/status").read()
    return int(status.split("VmSize:")[1].split()[0])


class AddressSpaceOfTheWorker(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return address_space_kib()


def test_evaluation_workers_do_not_copy_the_trainers_address_space():
    """A trainer can map tens of GB (FFCV's buffers); a forked evaluation worker would need all of
    it again. The workers of evaluation loaders start afresh."""
    import numpy as np

    from sslight.eval.features import image_loader

    ballast = np.empty(8 * 2**30, np.uint8)  # 8 GiB of address space, never touched
    parent = address_space_kib()
    (sizes,) = list(image_loader(AddressSpaceOfTheWorker(), 2, workers=1))
    assert int(sizes.max()) < parent - 8 * 2**20, (int(sizes.max()), parent)
    del ballast


def test_evaluation_runs_a_compiled_backbone_eager(cifar_small):
    """nn.Module.compile compiles in place: evaluation's eval mode, no_grad and batch sizes would
    compile the training graph again each time, towards dynamo's recompile limit. The count of
    graphs is what a compiled run logs (compiled_graphs)."""
    from sslight.eval.features import extract
    from sslight.train.log import CompileCount

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())
    compiles = CompileCount(True)
    backbone.compile(backend="eager", dynamic=False)  # dynamo's graphs, without the minute of code generation
    backbone(torch.randn(4, 3, 32, 32)).sum().backward()  # a training step's forward and backward
    assert compiles.read() == dict(compiled_graphs=1)
    split = load_dataset(cifar_small).test.subset(6, 0)
    features, _ = extract(backbone, split, 32, torch.device("cpu"), torch.float32, workers=0, batch=4)
    assert features.shape == (6, 8) and backbone.training
    assert compiles.read() == dict(compiled_graphs=1)
