"""Photometric augmentation: shapes, ranges, probabilities, and agreement with torchvision."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from sslight.augment import IMAGENET_MEAN, IMAGENET_STD, Photometric, ViewPhotometry, cpu_kernel
from sslight.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
# the GPU machine's Python has no numba: there the CPU runs the tensor ops, and these tests skip
needs_numba = pytest.mark.skipif(cpu_kernel() is None, reason="numba not installed: no fused CPU kernel")

N = 4000  # samples for probability checks; 4 sigma of a Bernoulli(0.2) mean is about 0.025


def unnormalise(x):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x.float() * std + mean


def test_shapes_dtype_layout_range():
    settings = METHODS["dino"].photometry(2, 6)
    aug = Photometric(settings, 32, torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    views = torch.randint(0, 256, (2, 5, 3, 32, 32), dtype=torch.uint8)
    out = aug(views, 0, g)
    assert out.shape == (10, 3, 32, 32) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    pixels = unnormalise(out)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    local = aug(torch.randint(0, 256, (6, 5, 3, 18, 18), dtype=torch.uint8), 2, g)
    assert local.shape == (30, 3, 18, 18)
    bf16 = Photometric(settings, 32, torch.device("cpu"), torch.bfloat16)(views, 0, g)
    assert bf16.dtype == torch.bfloat16


def test_per_view_settings_follow_design():
    dino = METHODS["dino"].photometry(2, 6)
    assert [s.blur_p for s in dino] == [1.0, 0.1] + [0.5] * 6
    assert [s.solarize_p for s in dino] == [0.0, 0.2] + [0.0] * 6
    swav = METHODS["swav"].photometry(2, 6)
    assert {s.blur_p for s in swav} == {0.5} and {s.solarize_p for s in swav} == {0.0}
    assert swav[0].jitter == (0.8, 0.8, 0.8, 0.2)


def only(**kw):
    base = dict(jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0, grey_p=0.0, blur_p=0.0, solarize_p=0.0)
    base.update(kw)
    return ViewPhotometry(**base)


def colourful(n, size=8):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (1, n, 3, size, size), dtype=torch.uint8, generator=g)


def test_greyscale_probability():
    aug = Photometric([only(grey_p=0.2)], 224, torch.device("cpu"), torch.float32)
    x = unnormalise(aug(colourful(N), 0, torch.Generator().manual_seed(2)))
    grey = (x.amax(1) - x.amin(1)).flatten(1).amax(1) < 1e-4
    assert abs(grey.float().mean().item() - 0.2) < 0.025


def test_solarize_probability_and_threshold():
    aug = Photometric([only(solarize_p=0.2)], 224, torch.device("cpu"), torch.float32)
    views = colourful(N)
    x = unnormalise(aug(views, 0, torch.Generator().manual_seed(3)))
    src = views[0].float() / 255
    changed = (x - src).abs().flatten(1).amax(1) > 1e-3
    assert abs(changed.float().mean().item() - 0.2) < 0.025
    expected = torch.where(src >= 128 / 255, 1 - src, src)
    torch.testing.assert_close(x[changed], expected[changed], atol=2e-4, rtol=0)


def test_blur_probability_and_identity_when_off():
    # globals of 896 px scale sigma to 0.4..8 px, so every blur that happens is visible
    aug = Photometric([only(blur_p=0.5)], 896, torch.device("cpu"), torch.float32)
    views = colourful(N, 16)
    x = unnormalise(aug(views, 0, torch.Generator().manual_seed(4)))
    src = views[0].float() / 255
    changed = (x - src).abs().flatten(1).amax(1) > 1e-3
    assert abs(changed.float().mean().item() - 0.5) < 0.03
    torch.testing.assert_close(x[~changed], src[~changed], atol=2e-4, rtol=0)
    # blur keeps the mean level and lowers the variance of noise
    assert (x[changed].var((1, 2, 3)) < src[changed].var((1, 2, 3))).all()


def test_blur_matches_torchvision_gaussian():
    aug = Photometric([only(blur_p=1.0)], 224, torch.device("cpu"), torch.float32)
    x = torch.rand(1, 3, 32, 32)
    sigma = torch.tensor([1.3])
    kernel = aug.blur_kernels((sigma - 0.1) / 1.9, 32, 32)
    ours = aug.blur(x, kernel, torch.tensor([True]))
    ref = TF.gaussian_blur(x, kernel_size=[2 * 4 + 1] * 2, sigma=[1.3, 1.3])  # reach ceil(3 sigma) = 4
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("field, index, tv", [
    ("brightness", 1, lambda x, f: TF.adjust_brightness(x, f)),
    ("contrast", 2, lambda x, f: TF.adjust_contrast(x, f)),
    ("saturation", 3, lambda x, f: TF.adjust_saturation(x, f)),
])
def test_colour_matrix_matches_torchvision(field, index, tv):
    """Each jitter factor alone equals torchvision's op (inputs chosen so nothing clips)."""
    aug = Photometric([only()], 224, torch.device("cpu"), torch.float32)
    x = 0.3 + 0.4 * torch.rand(6, 3, 8, 8)
    u = torch.full((6, 9), 0.5)
    u[:, 0] = 0.0  # jitter on
    u[:, index] = torch.linspace(0.2, 0.8, 6)
    u[:, 5] = 1.0  # no greyscale
    strengths = torch.zeros(6, 4)
    strengths[:, index - 1] = 0.4
    m, o = aug.colour_matrices(u, strengths, torch.ones(6), torch.zeros(6), x.mean((2, 3)))
    ours = torch.baddbmm(o.unsqueeze(-1), m, x.view(6, 3, -1)).view_as(x)
    factors = 1 + 0.4 * (2 * u[:, index] - 1)
    ref = torch.stack([tv(x[i:i + 1], float(factors[i]))[0] for i in range(6)])
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=0)


def test_hue_rotation_keeps_luma_and_turns_chroma():
    aug = Photometric([only()], 224, torch.device("cpu"), torch.float32)
    x = torch.rand(1, 3, 8, 8)
    u = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.75, 1.0, 0, 0, 0]])
    m, o = aug.colour_matrices(u, torch.tensor([[0, 0, 0, 0.5]]), torch.ones(1), torch.zeros(1), x.mean((2, 3)))
    y = torch.baddbmm(o.unsqueeze(-1), m, x.view(1, 3, -1))
    luma = torch.tensor([0.299, 0.587, 0.114])
    torch.testing.assert_close(luma @ y[0], luma @ x.view(3, -1), atol=1e-5, rtol=0)
    assert not torch.allclose(y, x.view(1, 3, -1), atol=1e-2)
    # a quarter turn (hue 0.25) applied four times is the identity
    assert math.isclose(0.5 * (2 * 0.75 - 1), 0.25)
    torch.testing.assert_close(torch.linalg.matrix_power(m[0], 4), torch.eye(3), atol=1e-5, rtol=0)


def test_jitter_probability():
    aug = Photometric([only(jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8)], 224, torch.device("cpu"), torch.float32)
    views = colourful(N)
    x = unnormalise(aug(views, 0, torch.Generator().manual_seed(5)))
    changed = (x - views[0].float() / 255).abs().flatten(1).amax(1) > 1e-3
    assert abs(changed.float().mean().item() - 0.8) < 0.025


def test_same_seed_same_views():
    aug = Photometric(METHODS["dino"].photometry(2, 0), 32, torch.device("cpu"), torch.float32)
    views = colourful(8, 32).expand(2, -1, -1, -1, -1)
    a = aug(views, 0, torch.Generator().manual_seed(7))
    b = aug(views, 0, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@needs_numba
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("method, size, n_views", [("dino", 224, 2), ("dino", 18, 6), ("swav", 96, 3), ("dino", 4, 2)])
def test_cpu_kernel_equals_tensor_ops(method, size, n_views, layout):
    """The fused CPU kernel computes what the accelerator's tensor ops compute, view by view
    (4 px views clamp the blur radius to 3), from the loaders' channels-last views or others."""
    settings = METHODS[method].photometry(2, 6)
    aug = Photometric(settings, 224, torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(6)
    views = torch.randint(0, 256, (n_views, 16, 3, size, size), dtype=torch.uint8, generator=g).flatten(0, 1)
    views = views.contiguous(memory_format=layout)
    table = aug.table[:n_views].repeat_interleave(16, 0)
    params = aug.parameters(views, table, torch.rand(len(views), 9, generator=g))
    fused = aug.fused_cpu(views, *params)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused, aug.tensor_ops(views, *params), atol=2e-5, rtol=0)


@needs_numba
def test_without_numba_the_cpu_runs_the_tensor_ops(tmp_path):
    """Where numba is not installed (the GPU machine), the CPU path takes the tensor ops, and they
    give what the fused kernel gives from the same draws."""
    g = torch.Generator().manual_seed(8)
    views = torch.randint(0, 256, (8, 6, 3, 24, 24), dtype=torch.uint8, generator=g)
    u = torch.rand(48, 9, generator=g)
    torch.save((views, u), tmp_path / "inputs.pt")
    script = f"""
import sys
sys.modules["numba"] = None  # as if it were not installed
import torch
from sslight.augment import Photometric, cpu_kernel
from sslight.methods import METHODS
assert cpu_kernel() is None
views, u = torch.load({str(tmp_path / "inputs.pt")!r})
out = Photometric(METHODS["dino"].photometry(2, 6), 24, torch.device("cpu"), torch.float32).apply(views, 0, u)
torch.save(out, {str(tmp_path / "out.pt")!r})
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, env=env, timeout=120)
    fused = Photometric(METHODS["dino"].photometry(2, 6), 24, torch.device("cpu"), torch.float32).apply(views, 0, u)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), fused, atol=2e-5, rtol=0)


@needs_numba
def test_cpu_output_buffer_reused_only_when_dropped():
    """The CPU kernel's output buffer comes back for the next batch only once the caller has let
    go of the previous one: held views are never overwritten."""
    aug = Photometric(METHODS["dino"].photometry(2, 0), 32, torch.device("cpu"), torch.float32)
    views = colourful(8, 32).expand(2, -1, -1, -1, -1)
    first = aug(views, 0, torch.Generator().manual_seed(1))
    kept = first.clone()
    second = aug(views, 0, torch.Generator().manual_seed(2))
    assert first.data_ptr() != second.data_ptr() and torch.equal(first, kept)
    pointer = second.data_ptr()
    del first, second
    third = aug(views, 0, torch.Generator().manual_seed(1))
    assert third.data_ptr() == pointer and torch.equal(third, kept)


def hsv_hue_turns(before, after):
    """The hue change of each pixel in turns (-0.5, 0.5], from the RGB hexagon's angle."""
    def angle(t):
        r, g, b = t[:, 0], t[:, 1], t[:, 2]
        return torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)
    return torch.remainder(angle(after) - angle(before) + math.pi, 2 * math.pi) / (2 * math.pi) - 0.5


@pytest.mark.parametrize("hue", [-0.1, -0.05, 0.02, 0.05, 0.1])
def test_hue_shift_agrees_with_torchvision_in_sign_and_size(hue):
    """The YIQ rotation turns hue the way torchvision's adjust_hue does, by about as much: every
    pixel's hue moves in the same direction, and the mean move is within 10% of torchvision's
    (the rotation keeps luma, HSV hue does not, so single pixels differ more)."""
    aug = Photometric([only()], 224, torch.device("cpu"), torch.float32)
    x = 0.2 + 0.6 * torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    u = torch.full((64, 9), 0.5)
    u[:, 0], u[:, 5] = 0.0, 1.0  # jitter on, no greyscale
    u[:, 4] = (hue / 0.5 + 1) / 2  # strength 0.5: factor 2u - 1 gives the hue
    strengths = torch.tensor([[0.0, 0.0, 0.0, 0.5]]).expand(64, 4)
    m, o = aug.colour_matrices(u, strengths, torch.ones(64), torch.zeros(64), x.mean((2, 3)))
    ours = hsv_hue_turns(x, torch.baddbmm(o.unsqueeze(-1), m, x.view(64, 3, -1)).view_as(x))
    theirs = hsv_hue_turns(x, TF.adjust_hue(x, hue))
    assert bool((torch.sign(ours) == math.copysign(1, hue)).all()) and bool((torch.sign(theirs) == math.copysign(1, hue)).all())
    assert abs(ours.mean().item() - theirs.mean().item()) < 0.1 * abs(hue)
