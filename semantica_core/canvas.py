"""Sampling at any size, done one way for every entry point (pipeline.py, single_image.py, text_guidance.py).

The networks need H and W in multiples of `required_multiple()`: fresh samples are drawn on the request rounded up
and the centre is cropped back; a guide (SDEdit, outpainting) is padded to that canvas and cropped back the same way.
Image i of a request uses seed + i (`BatchNoise.from_seed`), so it is the same alone or in a batch.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .diffusion import BatchNoise, initial_noise, sample


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def canvas_size(network: torch.nn.Module, width: int, height: int) -> tuple[int, int]:
    """The size the network samples at: the request rounded up to the network's multiple (cropped back after)."""
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be at least 1 pixel; got {width}x{height}")
    multiple = network.required_multiple()
    return round_up(width, multiple), round_up(height, multiple)


def center_crop(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


def pad_to(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Reflect-pads (replicate for tiny images) to a larger canvas, centred, so `center_crop` back is exact."""
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    mode = "reflect" if max(pads[0], pads[1]) < x.shape[-1] and max(pads[2], pads[3]) < x.shape[-2] else "replicate"
    return F.pad(x, pads, mode=mode)


def model_device(model) -> torch.device:
    """Where a SemanticaModel's weights are: its sampling runs there."""
    return next(model.network.parameters()).device


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model pixels in [-1, 1] -> images in [0, 1], clamped."""
    return x.clamp(-1, 1).add(1).div(2)


def sample_canvas(
    model,
    denoise: Callable,
    noise: BatchNoise,
    width: int,
    height: int,
    sigmas: torch.Tensor,
    sampler: str,
    callback: Optional[Callable[[dict], None]] = None,
) -> torch.Tensor:
    """Fresh samples [len(noise), C, height, width] in [0, 1]: noise on the canvas, sampled down `sigmas` with
    `denoise(x, sigma) -> x0`, the centre cropped back to the request."""
    canvas_w, canvas_h = canvas_size(model.network, width, height)
    x = initial_noise(noise, (model.channels, canvas_h, canvas_w), float(sigmas[0]))
    with torch.no_grad():
        x = sample(sampler, denoise, x, sigmas, noise=noise, callback=callback)
    return to_unit(center_crop(x, width, height))
