"""Photometric augmentation, batched on the training device (docs/design.md).

Loaders hand over uint8 views with geometry applied; everything photometric happens here,
once, for every backend. Per sample, colour jitter and greyscale are composed into one 3x3
colour matrix plus an offset; blur is a separable Gaussian with per-sample taps. The per-sample
parameters are drawn and composed here with small tensor ops; the pixel work is then either a
fixed number of batched tensor ops with no host synchronisation (accelerators: one matmul, an
identity kernel where blur is off) or, on the CPU, the fused kernel of ``sslight.augment_cpu``
where numba is installed (the tensor ops otherwise: the GPU machine's image has no numba).

Where this departs from torchvision's ``ColorJitter`` (documented, by design):
- the jitter order is fixed (brightness, contrast, saturation, hue), not shuffled per call;
- hue is a rotation of the chroma plane in YIQ space, a linear approximation of the HSV hue
  shift (the same choice as DALI's ``hsv`` operator); it keeps luma exactly and differs from
  HSV hue most for saturated colours;
- values are clamped to [0, 1] once at the end, not after each jitter op.
Blur sigma is drawn from U(0.1, 2.0) pixels at the 224 px reference and scaled with the
global view size, so small images (CIFAR) keep the blur's relative strength; the Gaussian is cut
at ceil(3 sigma) pixels (the CPU kernel then only runs the taps it needs).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)
REFERENCE_SIZE = 224
SIGMA_RANGE = (0.1, 2.0)
SOLARIZE_THRESHOLD = 127.5 / 255  # 128 of 255 for uint8 input, robust to float rounding


@dataclass(frozen=True)
class ViewPhotometry:
    """The photometric settings of one view; each method lists its own (methods/)."""

    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue strengths
    jitter_p: float
    grey_p: float
    blur_p: float
    solarize_p: float


@functools.cache
def cpu_kernel():
    """The fused CPU kernel's module, or None where numba cannot be imported: not installed (it
    does not travel to the GPU machine: its llvmlite alone is about 40 MB), or built for another
    NumPy (numba refuses to import then). The CPU then runs the tensor ops, from the same
    parameters. Decided once per process."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    from sslight import augment_cpu

    return augment_cpu


def _yiq() -> tuple[torch.Tensor, torch.Tensor]:
    rgb_to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                              dtype=torch.float64)
    return rgb_to_yiq.float(), torch.linalg.inv(rgb_to_yiq).float()


class Photometric:
    """Augments resolution groups of views: uint8 (n, B, 3, S, S) -> normalised (n*B, 3, S, S)."""

    def __init__(self, settings: list[ViewPhotometry], global_size: int, device: torch.device,
                 dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        # one row per view: jitter strengths (4), jitter_p, grey_p, blur_p, solarize_p
        self.table = torch.tensor([[*s.jitter, s.jitter_p, s.grey_p, s.blur_p, s.solarize_p] for s in settings],
                                  device=device)
        self.sigma_scale = global_size / REFERENCE_SIZE
        self.max_radius = math.ceil(3 * SIGMA_RANGE[1] * self.sigma_scale)
        f = dict(device=device)
        std = torch.tensor(IMAGENET_STD, **f).view(1, 3, 1, 1)
        self.norm_scale, self.norm_shift = 1 / std, -torch.tensor(IMAGENET_MEAN, **f).view(1, 3, 1, 1) / std
        self.luma = torch.tensor(LUMA, **f)
        self.grey = torch.ones(3, 1, **f) @ self.luma.view(1, 3)
        self.rgb_to_yiq, self.yiq_to_rgb = (m.to(device) for m in _yiq())

    def colour_matrices(self, u: torch.Tensor, strengths: torch.Tensor, jitter_p: torch.Tensor,
                        grey_p: torch.Tensor, mean_rgb: torch.Tensor):
        """Per-sample (M, o) so that jitter then greyscale is ``M @ rgb + o``."""
        n = u.shape[0]
        eye = torch.eye(3, device=self.device).expand(n, 3, 3)
        on = (u[:, 0] < jitter_p).float()
        factor = lambda col, k: 1 + on * strengths[:, k] * (2 * u[:, col] - 1)  # noqa: E731
        brightness, contrast, saturation = factor(1, 0), factor(2, 1), factor(3, 2)
        hue = on * strengths[:, 3] * (2 * u[:, 4] - 1)

        m = brightness.view(n, 1, 1) * eye
        # contrast blends with the mean grey level of the image as it is at this point
        mean_grey = (m @ mean_rgb.unsqueeze(-1)).squeeze(-1) @ self.luma
        c = contrast.view(n, 1, 1)
        o = ((1 - contrast) * mean_grey).view(n, 1).expand(n, 3)
        m = c * m
        s = saturation.view(n, 1, 1)
        sat = s * eye + (1 - s) * self.grey
        m, o = sat @ m, (sat @ o.unsqueeze(-1)).squeeze(-1)
        angle = -hue * 2 * math.pi  # in YIQ a positive angle turns hue the opposite way to HSV hue
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(n, 3, 3, device=self.device)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        hue_m = self.yiq_to_rgb @ rot @ self.rgb_to_yiq
        m, o = hue_m @ m, (hue_m @ o.unsqueeze(-1)).squeeze(-1)
        grey_on = (u[:, 5] < grey_p).view(n, 1, 1)
        g = torch.where(grey_on, self.grey.expand(n, 3, 3), eye)
        return g @ m, (g @ o.unsqueeze(-1)).squeeze(-1)

    def blur_kernels(self, u_sigma: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Per-sample normalised Gaussian taps (n, 2R+1), sigma drawn from ``u_sigma``; each kernel
        reaches ceil(3 sigma) pixels (at most R) and is zero beyond, so its size follows sigma."""
        radius = max(0, min(self.max_radius, h - 1, w - 1))
        sigma = (SIGMA_RANGE[0] + (SIGMA_RANGE[1] - SIGMA_RANGE[0]) * u_sigma) * self.sigma_scale
        taps = torch.arange(-radius, radius + 1, device=self.device, dtype=torch.float32)
        kernel = torch.exp(-(taps.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
        kernel = torch.where(taps.abs() <= torch.ceil(3 * sigma).view(-1, 1), kernel, 0)
        return kernel / kernel.sum(1, keepdim=True)

    def blur(self, x: torch.Tensor, kernel: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        """Blurs the samples where ``on``; the others get an identity kernel, so there is no host sync."""
        radius = (kernel.shape[1] - 1) // 2
        if radius < 1:
            return x
        identity = (torch.arange(kernel.shape[1], device=x.device) == radius).to(kernel.dtype).expand_as(kernel)
        return self._separable(x, torch.where(on.view(-1, 1), kernel, identity).to(x.dtype), radius)

    @staticmethod
    def _separable(x: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
        n, ch, h, w = x.shape
        kernel = kernel.repeat_interleave(ch, 0)  # one kernel per (sample, channel)
        planes = x.reshape(1, n * ch, h, w)
        planes = torch.nn.functional.pad(planes, (radius, radius, radius, radius), mode="reflect")
        planes = torch.nn.functional.conv2d(planes, kernel.view(n * ch, 1, 1, -1), groups=n * ch)
        planes = torch.nn.functional.conv2d(planes, kernel.view(n * ch, 1, -1, 1), groups=n * ch)
        return planes.view(n, ch, h, w)

    def __call__(self, views: torch.Tensor, first_view: int, generator: torch.Generator) -> torch.Tensor:
        n = views.shape[0] * views.shape[1]
        return self.apply(views, first_view, torch.rand(n, 9, generator=generator, device=self.device))

    def batch(self, groups: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """Every resolution group of a batch (globals first, then locals), each view with its own
        settings."""
        out, first_view = [], 0
        for views in groups:
            out.append(self(views, first_view, generator))
            first_view += views.shape[0]
        return out

    def apply(self, views: torch.Tensor, first_view: int, u: torch.Tensor) -> torch.Tensor:
        """Augments with the given uniform draws ``u`` (n_views*B, 9): one row per output view.

        On the CPU the fused kernel of ``sslight.augment_cpu`` does the pixel work where numba is
        installed; elsewhere tensor ops do. Both take the same per-sample parameters."""
        n_views, batch = views.shape[:2]
        views = views.flatten(0, 1)
        params = self.parameters(views, self.table[first_view:first_view + n_views].repeat_interleave(batch, 0), u)
        if self._fused(views):
            return self.fused_cpu(views, *params)
        return self.tensor_ops(views, *params)

    @staticmethod
    def _fused(views: torch.Tensor) -> bool:
        return views.device.type == "cpu" and cpu_kernel() is not None

    def parameters(self, views: torch.Tensor, table: torch.Tensor, u: torch.Tensor):
        """Per-sample colour matrix (for 0..255 input) and offset, blur taps, blur and solarize flags."""
        if self._fused(views):
            means = cpu_kernel().channel_means(views)  # without a float copy of the views
        else:
            means = views.float().mean((2, 3))
        m, o = self.colour_matrices(u, table[:, :4], table[:, 4], table[:, 5], means / 255)
        kernel = self.blur_kernels(u[:, 7], *views.shape[2:])
        return m / 255, o, kernel, u[:, 6] < table[:, 6], u[:, 8] < table[:, 7]

    def fused_cpu(self, views, matrix, offset, kernel, blur_on, solarize_on) -> torch.Tensor:
        return cpu_kernel().photometric(views, matrix, offset, kernel, blur_on, solarize_on, SOLARIZE_THRESHOLD,
                                        self.norm_scale, self.norm_shift).to(self.dtype)

    def tensor_ops(self, views, matrix, offset, kernel, blur_on, solarize_on) -> torch.Tensor:
        n, _, h, w = views.shape
        pixels = views.movedim(1, -1).reshape(n, h * w, 3).float()  # no copy of channels-last views
        x = torch.baddbmm(offset.unsqueeze(1), pixels, matrix.transpose(1, 2)).view(n, h, w, 3).movedim(-1, 1)
        x = self.blur(x.clamp_(0, 1), kernel, blur_on)
        x = torch.where(solarize_on.view(-1, 1, 1, 1) & (x >= SOLARIZE_THRESHOLD), 1 - x, x)
        # normalise and change layout in one pass
        out = torch.empty_like(x, memory_format=torch.channels_last)
        return torch.addcmul(self.norm_shift, x, self.norm_scale, out=out).to(self.dtype)
