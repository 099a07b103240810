"""Sampler callbacks for the host: progress bar, x0 preview and interrupt, in one callable.

The core samplers call `callback({"i", "total", "x", "sigma", "denoised"})` once per step, with `denoised` the
current x0 estimate in the diffusion code's pixel space [-1, 1]. Raising from the callback stops sampling, which
is how ComfyUI's Cancel reaches the core.
"""
from __future__ import annotations

import torch
from PIL import Image

import comfy.model_management
import comfy.utils
from comfy.cli_args import LatentPreviewMethod, args


def previews_enabled() -> bool:
    """Follows the host's --preview-method: "none" (ComfyUI's default) turns previews off."""
    return args.preview_method != LatentPreviewMethod.NoPreviews


def x0_preview(denoised: torch.Tensor, max_size: int | None = None) -> tuple[str, Image.Image, int]:
    """First image of an x0 batch [B, C, H, W] in [-1, 1] -> ComfyUI's preview tuple (format, PIL image, max size)."""
    x = denoised[0].detach().float()
    if x.shape[0] == 4:  # RGBA-like: show the color channels
        x = x[:3]
    pixels = ((x + 1) * 127.5).clamp(0, 255).to(device="cpu", dtype=torch.uint8)
    if pixels.shape[0] == 1:
        image = Image.fromarray(pixels[0].numpy()).convert("RGB")
    else:
        image = Image.fromarray(pixels[:3].movedim(0, -1).contiguous().numpy())
    return ("JPEG", image, max_size if max_size is not None else args.preview_size)


class SamplingProgress:
    """Callable for the core's `callback`: one ComfyUI progress step per sampler step, with an x0 preview.

    `total` fixes the bar's length; left out, each callback's own `total` is used.
    """

    def __init__(self, total: int | None = None, preview: bool | None = None):
        self.total = total
        self.preview = previews_enabled() if preview is None else preview
        self.bar = comfy.utils.ProgressBar(total or 1)

    def __call__(self, info: dict) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        total = int(self.total or info["total"])
        denoised = info.get("denoised")
        preview = x0_preview(denoised) if self.preview and denoised is not None else None
        self.bar.update_absolute(int(info["i"]) + 1, total, preview)
