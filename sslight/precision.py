"""A run's forward precision (``train.precision``): its dtype, the autocast that applies it, the
fp32 region the losses run in, and the ``auto`` choice for the machine."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

# x86 flags of native bf16 arithmetic (/proc/cpuinfo): AVX512-BF16 (Cooper Lake, Sapphire Rapids
# and later, Zen 4 and later) and AMX-BF16 (Sapphire Rapids and later)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def dtype_of(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on ``device``; for fp32 no autocast at all (a disabled one would also switch
    off an autocast that an outer caller has in force)."""
    if dtype == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device: torch.device):
    """Autocast off on ``device``, whatever the caller has in force: inside, an op computes in its
    inputs' dtype (cast them with ``.float()``). Losses, softmax with temperature, Sinkhorn and
    queues run here; under autocast their matmuls would be recast to bf16 (DINO's pair loss
    contracts over 65,536 outputs per sample)."""
    return torch.autocast(device.type, enabled=False)


def native_bf16_flags(cpuinfo: str) -> list[str]:
    """The native-bf16 flags that the ``flags`` lines of a /proc/cpuinfo text list."""
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") and ":" in line
             for flag in line.split(":", 1)[1].split()}
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU description, or "" where there is none to read (not Linux)."""
    try:
        return path.read_text()
    except OSError:
        return ""


def auto_precision(cuda: bool, native_bf16: list[str], depthwise: bool) -> tuple[str, str]:
    """(precision, why) for ``train.precision=auto``.

    CUDA: bf16. A CPU without native bf16 (this project's 2-core AMD EPYC, AVX2 only): fp32, as
    bf16 autocast is emulated there and a training step 10-20x slower (BENCHMARKS.md, CPU
    precision). A CPU with native bf16: bf16, except for backbones built on depthwise
    convolutions (MobileNetV2), whose bf16 kernels are slower than fp32 on such CPUs too (DESIGN.md
    section 4, one step of the CNN recipe: ResNet-18 18 images/s in bf16 against 9 in fp32,
    MobileNetV2 29 against 45). ViTs, matmuls like ResNet's convolutions, take bf16 there too
    (not measured)."""
    if cuda:
        return "bf16", "CUDA"
    if not native_bf16:
        return "fp32", "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag): bf16 is emulated"
    if depthwise:
        return "fp32", f"the backbone's depthwise convolutions are slower in bf16, even with {native_bf16[0]}"
    return "bf16", f"this CPU has native bf16 ({', '.join(native_bf16)})"
