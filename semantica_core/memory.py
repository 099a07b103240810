"""The memory a request needs and the memory a device has free, so a request that cannot fit is refused before it
runs (instead of swapping, being killed, or holding a host's queue for hours).

The estimate follows the networks' forward pass block by block: the skip connections a UNet keeps, plus the
working tensors of the block running (a ResBlock's normalised and convolved maps, an attention block's token
streams and MLP). Attention itself adds no keys x queries matrix: PyTorch's fused kernels (flash attention on the
CPU, memory-efficient attention on CUDA) never materialise it. Measured on the CPU (tiny demo model, 128 to 512
px, tests/test_reliability.py; float32) the estimate is within about 15 % of the resident memory the run adds:
measured 85 / 259-299 / 746 MiB at 128 / 256 / 512 px with two rows, estimated 144 / 290 / 872 MiB.
Pure torch: no host is imported here.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

# Elements per pixel of the working set of one block, per channel (see _walk). Counted from the forward code:
# a ResBlock holds its input, the float32 norm and SiLU of it and up to four maps of its output width; an
# attention block holds the token copy, its norm, the fused q/k/v, the outputs and the 8x-wide GEGLU hidden layer.
RES_IN, RES_OUT = 2, 4
ATTENTION = 20
SAMPLER_MAPS = 12  # x, noise, denoised and a sampler's history (dpmpp_2m, heun) at the image's channels
OVERHEAD = 96 * 2**20  # allocator slack and per-thread buffers, fitted to the runs measured below


class RequestTooLargeError(ValueError):
    """A request that cannot fit in the device's free memory; the message names the size, the estimate and what to
    change."""


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _walk(network: nn.Module, height: int, width: int) -> tuple[int, int]:
    """(peak elements alive at once, sum of every block's working elements) of one forward of one row."""
    from .networks.blocks import Downsample, ResBlock, Upsample

    px, c = height * width, network.conv_in.out_channels
    skips = [(px, c)]
    live = px * c
    peak, total = live, live

    def visit(layer, px, c):
        """(working elements, out px, out channels) of one layer on an input of px pixels and c channels."""
        if isinstance(layer, Downsample):
            return px * c + px // 4 * c, px // 4, c
        if isinstance(layer, Upsample):
            return px * c + 8 * px * c, px * 4, c
        res = layer if isinstance(layer, ResBlock) else layer.res
        cout = res.conv1.out_channels
        work = px * (RES_IN * c + RES_OUT * cout)
        if getattr(layer, "attn", None) is not None:
            work = max(work, px * ATTENTION * cout)
        return work, px, cout

    for layer in network.down:
        work, px, c = visit(layer, px, c)
        peak, total = max(peak, live + work), total + work
        skips.append((px, c))
        live += px * c
    for layer in network.middle:
        work, px, c = visit(layer, px, c)
        peak, total = max(peak, live + work), total + work
    for layer in network.up:
        if not isinstance(layer, Upsample):
            skip_px, skip_c = skips.pop()
            live -= skip_px * skip_c
            c += skip_c  # the concatenated input (the skip and the old map are freed once it exists)
        work, px, c = visit(layer, px, c)
        peak, total = max(peak, live + work), total + work
    out = px * 3 * c  # norm_out, SiLU and the output convolution
    return max(peak, out), total + out


def _element_size(network: nn.Module) -> int:
    return next(network.parameters()).element_size()


def sampling_bytes(network: nn.Module, rows: int, height: int, width: int) -> int:
    """Bytes one sampling run needs on top of the loaded weights: `rows` images through the network at once (twice
    the images with classifier-free guidance) on a height x width canvas."""
    peak, _ = _walk(network, height, width)
    image = SAMPLER_MAPS * network.conv_out.out_channels * height * width
    return (rows * peak + rows * image) * _element_size(network) + OVERHEAD


def training_bytes(network: nn.Module, rows: int, height: int, width: int, gradient_checkpointing: bool = False,
                   ema: bool = True) -> int:
    """Bytes one training step needs: the weights, their gradients, AdamW's two moments and an EMA copy, plus the
    activations autograd keeps for the backward pass (every block's; with gradient checkpointing only the block
    inputs and one block's recomputation)."""
    peak, total = _walk(network, height, width)
    params = sum(p.numel() for p in network.parameters())
    per_row = 2 * peak if gradient_checkpointing else total + peak
    return (params * (5 if ema else 4) + rows * per_row) * _element_size(network) + OVERHEAD


def _cgroup_free() -> Optional[int]:
    """What the memory cgroup (a container's limit) still allows, if it sets one (cgroup v2, then v1)."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path) as f:
                limit = f.read().strip()
            with open(usage_path) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            return max(int(limit) - usage, 0)
    return None


def free_bytes(device) -> Optional[int]:
    """Memory a new allocation can use on `device` now, or None where it cannot be told (then nothing is refused).

    CPU: the kernel's MemAvailable (what can be allocated without swapping), capped by a container's cgroup limit.
    CUDA: the driver's free memory plus what PyTorch's caching allocator holds but does not use.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            import psutil
        except ImportError:
            return None
        available = psutil.virtual_memory().available
    cgroup = _cgroup_free()
    return available if cgroup is None else min(available, cgroup)


def check_fits(required: int, device, request: str, advice: str) -> None:
    """Raises RequestTooLargeError when `required` bytes exceed what `device` has free.

    `request` says what was asked ("4 images of 2048x2048"), `advice` what to change."""
    free = free_bytes(device)
    if free is not None and required > free:
        raise RequestTooLargeError(
            f"{request} needs about {gib(required)} of memory on {torch.device(device)} but only {gib(free)} is "
            f"free; {advice}"
        )


def check_sampling_fits(network: nn.Module, rows: int, height: int, width: int, device, request: str,
                        resolution: Optional[int] = None) -> None:
    """The sampling entry points' check: `rows` network rows (images, doubled under guidance) on a canvas."""
    trained = f" (it was trained at {resolution} px)" if resolution else ""
    check_fits(
        sampling_bytes(network, rows, height, width), device, request,
        f"ask for fewer images at once, a smaller width and height{trained}, or use a model trained at that size",
    )
