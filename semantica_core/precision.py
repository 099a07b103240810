"""One precision switch for every network call: bf16 autocast and channels-last memory where the hardware runs them
natively, float32 NCHW everywhere else.

The vocabulary, the same in the library, the CLI and the nodes:

  precision="auto"  (the default) bf16 autocast + channels-last on a CUDA GPU with bf16 and on a CPU with native
                    bf16 (AVX512-BF16 or AMX, read from the CPU's flags, not assumed); float32 NCHW otherwise.
  precision="bf16"  the fast path even where the hardware emulates bf16 (slower there; for tests and comparisons).
  precision="fp32"  float32 NCHW: the reference path, as before this module existed.

The environment variable SEMANTICA_PRECISION (auto, bf16 or fp32) replaces "auto" wherever a caller did not choose,
so `SEMANTICA_PRECISION=fp32` switches the fast path off for the nodes, the library and the CLI at once. The CLI
flag is `--precision`; library entry points take `precision=`.

Only the network's forward runs in bf16. What stays float32, and why: the weights, their gradients, the optimizer
state and the EMA (bf16 cannot hold small updates to a weight); the sampler's state between steps and the x0 formula
(Denoiser upcasts the network output: the step arithmetic needs float32's 24 bits); GroupNorm and LayerNorm
statistics (GroupNorm32 / LayerNorm32: bf16 means and variances are too coarse); attention while a CPU trains
(networks.blocks.attention: there its bf16 backward is the slower one); the timestep embedding's sinusoids (bf16
cannot resolve c_noise * freq); the loss (computed on float32 copies).
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch

PRECISIONS = ("auto", "bf16", "fp32")
ENV_VAR = "SEMANTICA_PRECISION"


@functools.lru_cache(maxsize=None)
def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware: x86 AVX512-BF16 or AMX-BF16, or an Arm core with BF16.

    oneDNN runs bf16 on any AVX512 CPU (`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is true there), but without
    these instructions it emulates bf16 and is slower than float32, so the flags decide.
    """
    try:
        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return cpuinfo_has_bf16(f.read())
    except OSError:  # not Linux: no reliable flag source, so no claim of native bf16
        return False


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text lists a bf16 compute flag (x86 `flags`: avx512_bf16, amx_bf16; Arm `Features`:
    bf16)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(set(value.split()) & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def device_native_bf16(device: Union[str, torch.device]) -> bool:
    """Whether `device` computes bf16 natively (CUDA: compute capability 8.0 or later)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_native_bf16()
    return False


def requested_precision(precision: Optional[str] = None) -> str:
    """The caller's choice; None or "auto" defer to SEMANTICA_PRECISION, else "auto". Refuses unknown names."""
    choice = (precision or "auto").strip().lower()
    source = f"precision {precision!r}"
    if choice == "auto" and os.environ.get(ENV_VAR, "").strip():
        choice, source = os.environ[ENV_VAR].strip().lower(), f"{ENV_VAR}={os.environ[ENV_VAR]!r}"
    if choice not in PRECISIONS:
        raise ValueError(f"unknown {source}; use one of {', '.join(PRECISIONS)}")
    return choice


@dataclass(frozen=True)
class Precision:
    """How a network runs on one device: autocast dtype (None: float32) and memory format."""

    device_type: str = "cpu"
    dtype: Optional[torch.dtype] = None
    channels_last: bool = False

    @property
    def name(self) -> str:
        """"bf16" or "fp32", as the vocabulary says it."""
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def autocast(self):
        """The autocast context of the network's forward (a no-op for float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def prepare(self, network: torch.nn.Module) -> torch.nn.Module:
        """Puts the network's 4-d weights into this memory format (in place; values and dtype unchanged).

        A network already in it is left alone (so one prepared before DDP/FSDP wrapping is not touched again)."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if all(p.ndim != 4 or p.is_contiguous(memory_format=memory_format) for p in network.parameters()):
            return network
        return network.to(memory_format=memory_format)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch in this memory format (a no-op for NCHW or for other ranks)."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


FP32 = Precision()


def resolve_precision(precision: Optional[str], device: Union[str, torch.device]) -> Precision:
    """The Precision that `precision` (see the module docstring) means on `device`."""
    choice = requested_precision(precision)
    device = torch.device(device)
    if choice == "fp32" or (choice == "auto" and not device_native_bf16(device)):
        return Precision(device.type)
    if device.type not in ("cpu", "cuda"):
        return Precision(device.type)  # autocast to bf16 is only measured on these two
    return Precision(device.type, torch.bfloat16, channels_last=True)


def accelerate_mixed_precision(precision: Optional[str], device: Union[str, torch.device]) -> str:
    """Our setting in accelerate's words ("bf16" or "no"), for `Accelerator(mixed_precision=...)`."""
    return "bf16" if resolve_precision(precision, device).dtype == torch.bfloat16 else "no"


def describe(precision: Precision) -> str:
    """One line for logs: "bf16 autocast, channels-last" or "float32"."""
    if precision.dtype is None:
        return "float32" + (", channels-last" if precision.channels_last else "")
    return "bf16 autocast" + (", channels-last" if precision.channels_last else "")
