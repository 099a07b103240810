"""Bringing images to a model's input: RGB conversion and fitting to a size (pad, crop or resize)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

FIT_MODES = ("crop", "pad", "resize")


def to_rgb(images: torch.Tensor, background: float = 1.0) -> torch.Tensor:
    """[B, C, H, W] in [0, 1] with C in 1 (gray), 3 (RGB) or 4 (RGBA) -> [B, 3, H, W].

    RGBA is composited over a flat `background` (white by default): the color of fully transparent pixels is
    arbitrary in most files, so dropping alpha would let it leak into the model's input.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    channels = images.shape[1]
    if channels == 3:
        return images
    if channels == 1:
        return images.repeat(1, 3, 1, 1)
    if channels == 4:
        rgb, alpha = images[:, :3], images[:, 3:4].clamp(0, 1)
        return rgb * alpha + background * (1 - alpha)
    raise ValueError(f"images need 1 (gray), 3 (RGB) or 4 (RGBA) channels, got {channels}")


def resize(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bicubic resize with antialiasing (downscaling without aliasing), clamped to [0, 1]."""
    if images.shape[-2:] == (height, width):
        return images
    out = F.interpolate(images.float(), size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0, 1).to(images.dtype)


def cover(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[B, C, H, W] in [0, 1] -> [B, 3, H', W'] scaled (aspect ratio kept) to just cover width x height: what the
    crop mode cuts its centre from, and training its random crops (so both see the same resizing)."""
    images = to_rgb(images)
    h, w = images.shape[-2:]
    scale = max(width / w, height / h)
    # Rounding may land one pixel short of the target: never a dimension smaller than it.
    return resize(images, max(width, round(w * scale)), max(height, round(h * scale)))


def fit_image(images: torch.Tensor, width: int, height: int, mode: str = "crop", pad_value: float = 0.5) -> torch.Tensor:
    """[B, C, H, W] in [0, 1] (C in 1, 3, 4) -> [B, 3, height, width].

    crop: scale to cover the target, then cut the center (keeps the aspect ratio, loses borders).
    pad: scale to fit inside the target, then pad centered with `pad_value` (gray by default: 0 in the model's
    [-1, 1] pixel space).
    resize: stretch to the target (changes the aspect ratio).
    """
    if mode not in FIT_MODES:
        raise ValueError(f"unknown fit mode '{mode}': use one of {', '.join(FIT_MODES)}")
    if width < 1 or height < 1:
        raise ValueError(f"target size must be at least 1x1, got {width}x{height}")
    images = to_rgb(images)
    if mode == "resize":
        return resize(images, width, height)
    if mode == "crop":
        scaled = cover(images, width, height)
        top, left = (scaled.shape[-2] - height) // 2, (scaled.shape[-1] - width) // 2
        return scaled[:, :, top:top + height, left:left + width]

    h, w = images.shape[-2:]
    scale = min(width / w, height / h)
    new_w, new_h = min(max(1, round(w * scale)), width), min(max(1, round(h * scale)), height)
    scaled = resize(images, new_w, new_h)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out = torch.full((images.shape[0], 3, height, width), pad_value, dtype=scaled.dtype, device=scaled.device)
    out[:, :, top:top + new_h, left:left + new_w] = scaled
    return out
