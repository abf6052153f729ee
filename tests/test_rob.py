"""RoB distillation (rob_dino): a frozen teacher from a checkpoint made here, its outputs in the
student's loss, and the errors for bad teacher inputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sslight import checkpoint
from sslight.cli import main
from sslight.methods import StepContext
from sslight.train.log import read
from sslight.train.loop import build_method, prepare
from sslight.train.optim import LARS, param_groups
from tests.conftest import TINY


@pytest.fixture(scope="module")
def teacher_ckpt(cifar_small, tmp_path_factory):
    """A ResNet-18 DINO checkpoint from two TINY steps: the teacher of a MobileNetV2 student."""
    out = tmp_path_factory.mktemp("teacher")
    with pytest.MonkeyPatch.context() as mp:  # module scope: keep caches out of the user's data dir
        mp.setenv("SSLIGHT_DATA", str(tmp_path_factory.getbasetemp() / "sslight-home"))
        assert main(["train", "--out", str(out), "--data", str(cifar_small), "--model", "r18", "--method", "dino",
                     "--batch", "8", "--steps", "2", "eval.every=0", *TINY, "eval.bank_limit=40",
                     "eval.query_limit=20"]) == 0
    return checkpoint.latest(out)


def teacher_weights(path):
    state = checkpoint.load(path, torch.device("cpu"))["method"]
    return {k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")}


def rob_method(data, *overrides):
    run = prepare(["method=rob_dino", f"data.path={data}", "train.batch_size=8", *TINY, *overrides])
    torch.manual_seed(0)
    return run.cfg, build_method(run.cfg, run.device, run.method_inputs)


def views(cfg, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = cfg.views
    return [torch.randn(v.n_global * batch, 3, v.global_size, v.global_size, generator=g),
            torch.randn(v.n_local * batch, 3, v.local_size, v.local_size, generator=g)]


def test_teacher_is_loaded_and_stays_frozen(cifar_small, teacher_ckpt):
    cfg, method = rob_method(cifar_small, f"teacher.path={teacher_ckpt}")
    loaded = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    for key, value in teacher_weights(teacher_ckpt).items():  # the DINO run's EMA teacher, buffers too
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    student_before = [p.detach().clone() for p in method.student.parameters()]
    optimizer = LARS(param_groups(method.trainable()), lr=0.1, weight_decay=0.0, momentum=0.9, eta=0.02)
    method.train()
    assert not method.teacher.training and method.student.training
    for step in range(3):
        ctx = StepContext(epoch=1, step=step, teacher_temp=0.04, momentum=0.5)
        loss, _, _ = method.loss(views(cfg, seed=step), ctx)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
        method.before_optimizer_step(ctx)
        optimizer.step()
        method.after_optimizer_step(ctx)  # DINO would move the teacher here (momentum 0.5)
    for key, value in method.teacher.state_dict().items():
        torch.testing.assert_close(value, loaded[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(p, q) for p, q in zip(method.student.parameters(), student_before))


def hand_dino_loss(student_out, teacher_out, center, teacher_temp, student_temp, n_global, n_views, alpha):
    """DINO's cross-entropy written out pair by pair, SSLight's alpha re-balancing."""
    targets = F.softmax((teacher_out - center) / teacher_temp, -1).chunk(n_global)
    log_probs = F.log_softmax(student_out / student_temp, -1).chunk(n_views)
    gg, gl = [], []
    for t in range(n_global):
        for s in range(n_views):
            if s != t:
                (gg if s < n_global else gl).append(-(targets[t] * log_probs[s]).sum(-1).mean())
    return alpha * sum(gg) / len(gg) + (1 - alpha) * sum(gl) / len(gl)


def test_student_loss_is_dino_cross_entropy_on_teacher_outputs(cifar_small, teacher_ckpt):
    cfg, method = rob_method(cifar_small, f"teacher.path={teacher_ckpt}")
    method.train()
    groups = views(cfg)
    ctx = StepContext(epoch=1, step=0, teacher_temp=0.05, momentum=1.0)
    method.center.normal_(0, 0.01)
    center = method.center.clone()
    loss, _, _ = method.loss(groups, ctx)
    with torch.no_grad():
        _, student_out = method.student(groups)
        teacher_out = method.teacher([groups[0]])[1]
    expected = hand_dino_loss(student_out, teacher_out, center, 0.05, cfg.dino.student_temp,
                              cfg.views.n_global, cfg.views.n_global + cfg.views.n_local, cfg.loss.alpha)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(method.center, center)  # the centre follows the teacher, as in DINO

    method.center.copy_(center)
    with torch.no_grad():
        method.teacher.head.last_layer.mul_(-1)  # another teacher, same student and views
    changed, _, _ = method.loss(groups, ctx)
    assert abs(changed.item() - loss.item()) > 1e-3


def test_rob_dino_trains_from_cli_with_a_timm_file_teacher(cifar_small, teacher_ckpt, tmp_path):
    """End to end: a timm-format safetensors backbone (as exported) plus the head checkpoint."""
    backbone = {k[len("backbone."):]: v.contiguous() for k, v in teacher_weights(teacher_ckpt).items()
                if k.startswith("backbone.")}
    backbone["fc.weight"] = torch.zeros(10, 512)  # a timm file's classifier is dropped
    timm_file = tmp_path / "r18.safetensors"
    save_file(backbone, timm_file)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data", str(cifar_small), "--method", "rob_dino",
                 "--teacher", str(timm_file), f"teacher.head_path={teacher_ckpt}",
                 "--batch", "8", "--steps", "2", *TINY, "eval.bank_limit=40", "eval.query_limit=20"]) == 0
    records = read(out / "metrics.jsonl")
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "train")
    assert 0 <= records[-1]["knn_top1"] <= 100
    saved = checkpoint.load(checkpoint.latest(out), torch.device("cpu"))["method"]
    for key, value in teacher_weights(teacher_ckpt).items():
        torch.testing.assert_close(saved[f"teacher.{key}"], value, rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def bad_files(teacher_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "garbage.pt").write_bytes(b"not a checkpoint")
    state = checkpoint.load(teacher_ckpt, torch.device("cpu"))
    state["config"]["method"] = "moco"  # a checkpoint of a method without a DINO head
    torch.save(state, root / "moco.pt")
    return dict(garbage=root / "garbage.pt", moco=root / "moco.pt")


@pytest.mark.parametrize("args, message", [
    ([], "teacher.path='': method rob_dino needs a teacher"),
    (["--teacher", "{tmp}/missing.pt"], "missing.pt': no such file"),
    (["--teacher", "{garbage}"], "garbage.pt': not a readable sslight checkpoint (UnpicklingError"),
    (["--teacher", "{moco}"], "a moco checkpoint has no DINO head"),
    (["--teacher", "{teacher}", "dino.out_dim=128"],
     "the teacher's head has out_dim 256, the student's dino.out_dim is 128; set dino.out_dim=256"),
    (["--teacher", "{tmp}/y.safetensors"], "teacher.head_path='': --teacher "),
    (["--teacher", "{tmp}/x.safetensors", "teacher.head_path={teacher}"], "x.safetensors': no such file"),
    (["--method", "dino", "--teacher", "{teacher}"], "only rob_dino uses a teacher; method is dino"),
])
def test_bad_teacher_input_stops_before_anything_is_written(cifar_small, teacher_ckpt, bad_files, tmp_path,
                                                            capsys, args, message):
    names = dict(tmp=tmp_path, teacher=teacher_ckpt, **bad_files)
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--data", str(cifar_small), "--method", "rob_dino", "--batch", "16",
            "--steps", "1", *TINY, *[a.format(**names) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_the_teacher_is_read_once_per_run(cifar_small, teacher_ckpt, tmp_path, monkeypatch):
    from sslight.methods import rob_teacher

    reads = []
    real = rob_teacher.read_checkpoint
    monkeypatch.setattr(rob_teacher, "read_checkpoint", lambda *a: reads.append(a) or real(*a))
    assert main(["train", "--out", str(tmp_path / "run"), "--data", str(cifar_small), "--method", "rob_dino",
                 "--teacher", str(teacher_ckpt), "--batch", "8", "--steps", "1", "eval.every=0", *TINY,
                 "eval.bank_limit=40", "eval.query_limit=20"]) == 0
    assert reads == [("teacher.path", str(teacher_ckpt))]
