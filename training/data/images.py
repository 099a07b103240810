"""Decoding untrusted image files and fitting them to a training size; a bad file raises `BadImage`, never crashes.

Decoding is semantica_core.image_files and fitting semantica_core.imageops, so training sees the pixels sampling
sees; this module adds what only training needs: the data statistics' reasons, random crops and flips.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
import torch

from semantica_core.image_files import ImageFileError, load_image_file
from semantica_core.imageops import cover, fit_image

class BadImage(Exception):
    """An image that cannot be used; `reason` is a stats key ("unreadable" or "too_small")."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: Union[bytes, str, os.PathLike], min_size: int = 1) -> torch.Tensor:
    """Bytes or a path -> float [3, H, W] in [0, 1] (`load_image_file`: EXIF orientation, alpha over white).

    Raises BadImage("unreadable") for a file that cannot be decoded completely and BadImage("too_small") when
    the shorter side is below min_size.
    """
    try:
        image = load_image_file(data)
    except ImageFileError as error:
        raise BadImage("unreadable", error.problem) from None
    height, width = image.shape[-2:]
    if min(height, width) < min_size:
        raise BadImage("too_small", f"{width}x{height} is below {min_size} px")
    return image


def fit_square(
    image: torch.Tensor,
    size: int,
    crop: str = "center",
    flip: bool = False,
    rng: Optional[np.random.Generator] = None,
) -> torch.Tensor:
    """[3, H, W] in [0, 1] -> [3, size, size]: "center" is fit_image's crop and "squash" its resize (what sampling
    and the nodes do); "random" cuts the same covering image at a random offset (centered without `rng`). `flip`
    mirrors the result."""
    if crop == "squash":
        out = fit_image(image[None], size, size, "resize")
    elif crop == "center" or (crop == "random" and rng is None):
        out = fit_image(image[None], size, size, "crop")
    elif crop == "random":
        scaled = cover(image[None], size, size)
        left = int(rng.integers(0, scaled.shape[-1] - size + 1))
        top = int(rng.integers(0, scaled.shape[-2] - size + 1))
        out = scaled[..., top:top + size, left:left + size]
    else:
        raise ValueError(f"unknown crop '{crop}': use 'center', 'random' or 'squash'")
    return out[0].flip(-1) if flip else out[0]


def condition_input(encoder) -> tuple[int, str]:
    """(size, crop) at which condition images are handed to `encoder`: its own preprocessing then resizes and crops
    exactly as at inference (a center crop of crop_pct, or a squash)."""
    pre = getattr(getattr(encoder, "spec", None), "preprocess", None)
    if pre is None:
        size = getattr(encoder, "image_size", None) or 224
        return int(size), "center"
    if pre.crop == "squash":
        return int(pre.image_size), "squash"
    return int(round(pre.image_size / pre.crop_pct)), "center"
