"""Decoding untrusted image files and fitting them to a training size; a bad file raises `BadImage`, never crashes."""
from __future__ import annotations

import io
import os
import re
import warnings
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class BadImage(Exception):
    """An image that cannot be used; `reason` is a stats key ("unreadable" or "too_small")."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(data: Union[bytes, str, os.PathLike], min_size: int = 1) -> Image.Image:
    """Bytes or a path -> fully decoded RGB image (EXIF orientation applied).

    Raises BadImage("unreadable") for anything PIL cannot decode completely (truncated files included: the
    pixels are loaded here, not lazily later) and BadImage("too_small") when the shorter side is below min_size.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's warnings (EXIF, palette transparency) are not errors here
            source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
            with Image.open(source) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    # Composite on white: the color under transparent pixels is arbitrary.
                    rgba = img.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    img = Image.alpha_composite(background, rgba).convert("RGB")
                else:
                    img = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as error:
        message = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))
        raise BadImage("unreadable", f"{type(error).__name__}: {message}") from None
    if min(img.size) < min_size:
        raise BadImage("too_small", f"{img.size[0]}x{img.size[1]} is below {min_size} px")
    return img


def fit_square(
    img: Image.Image,
    size: int,
    crop: str = "center",
    flip: bool = False,
    rng: Optional[np.random.Generator] = None,
) -> torch.Tensor:
    """Resize the shorter side to `size`, cut a size x size square (centered, or at a random offset), optionally
    mirror it; crop="squash" resizes the whole image to the square instead. Returns float [3, size, size] in [0, 1]."""
    w, h = img.size
    if crop == "squash":
        img = img.resize((size, size), Image.BICUBIC, reducing_gap=None)
        w = h = size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC, reducing_gap=None)
    if crop == "random" and rng is not None:
        left = int(rng.integers(0, new_w - size + 1))
        top = int(rng.integers(0, new_h - size + 1))
    elif crop in ("center", "random"):
        left, top = (new_w - size) // 2, (new_h - size) // 2
    else:
        raise ValueError(f"unknown crop '{crop}': use 'center', 'random' or 'squash'")
    img = img.crop((left, top, left + size, top + size))
    array = np.array(img, dtype=np.uint8)
    if flip:
        array = array[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)


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
