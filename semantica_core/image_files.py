"""Reading image files into the core's images: one loader for training, evaluation and the command line.

Hosts that decode files themselves (ComfyUI's LoadImage) hand over tensors instead; `imageops` takes it from there.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from typing import Optional, Union

import numpy as np
import torch

from .imageops import to_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit gray PNGs open in one of these modes


class ImageFileError(ValueError):
    """A file that cannot be used as an image; the message names the file and what is wrong with it."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"cannot read {name} as an image: {problem}")
        self.name, self.problem = name, problem


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def load_image_file(source: Union[str, os.PathLike, bytes], name: Optional[str] = None) -> torch.Tensor:
    """A path or the bytes of an image file -> float [3, H, W] in [0, 1].

    The EXIF orientation is applied (phones store portrait photos as rotated landscape ones), transparency is
    composited over white as `imageops.to_rgb` does, and gray, palette and CMYK images become RGB. Every pixel is
    decoded here, so a truncated file fails now rather than later in a data loader. Raises ImageFileError.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    data = isinstance(source, (bytes, bytearray, memoryview))
    name = name or ("the image data" if data else os.fspath(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings (odd EXIF, palette transparency) are not errors
            with Image.open(io.BytesIO(source) if data else source) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                array = _pixels(img)
    except FileNotFoundError:
        raise ImageFileError(name, "no such file") from None
    except IsADirectoryError:
        raise ImageFileError(name, "it is a folder, not a file") from None
    except PermissionError:
        raise ImageFileError(name, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageFileError(name, "not an image file Pillow can decode (use png, jpg or webp)") from None
    except Image.DecompressionBombError as error:
        raise ImageFileError(name, f"too many pixels ({error})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        message = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))
        raise ImageFileError(name, f"truncated or corrupt ({type(error).__name__}: {message})") from None
    image = torch.from_numpy(array)
    image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
    return to_rgb(image[None])[0].contiguous()


def _pixels(img) -> np.ndarray:
    """[H, W] (gray) or [H, W, 3 or 4] float32 in [0, 1]: RGBA where the file has transparency, for to_rgb."""
    if img.mode in _SIXTEEN_BIT:
        return np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode in ("1", "L"):
        img = img.convert("L")
    else:
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0
