"""A small page data set of real photos (scikit-image's sample images) for tests, demos and smoke runs.

Each page is one photo seen as 2-4 different crops (position, scale, flip, color jitter): related images, like the
images of one web page. Optionally adds the bad data a real crawl has: a truncated JPEG, random bytes named .png, a
1x1 image and a one-image page.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageEnhance

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "motorcycle_left", "hubble", "retina")


def _photo(name: str) -> np.ndarray:
    try:
        from skimage import data
    except ImportError as error:  # a test dependency, not a runtime one
        raise RuntimeError("example pages need scikit-image (pip install scikit-image)") from error
    if name == "motorcycle_left":
        return data.stereo_motorcycle()[0]
    if name == "hubble":
        return data.hubble_deep_field()
    return getattr(data, name)()


def write_example_pages(
    root: str, num_pages: int = 8, size: int = 96, with_bad_files: bool = False, seed: int = 0
) -> dict:
    """Writes root/<page>/<i>.<ext>; returns {"pages": {key: [file names]}, "bad": [relative paths]}."""
    rng = np.random.default_rng(seed)
    formats = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
    pages: dict[str, list[str]] = {}
    for p in range(num_pages):
        name = PHOTOS[p % len(PHOTOS)]
        photo = Image.fromarray(_photo(name)).convert("RGB")
        key = f"{p:02d}_{name}"
        os.makedirs(os.path.join(root, key), exist_ok=True)
        files = []
        for i in range(2 + p % 3):
            w, h = photo.size
            side = int(min(w, h) * rng.uniform(0.5, 0.9))
            left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop = ImageEnhance.Color(crop).enhance(float(rng.uniform(0.7, 1.3)))
            ext, fmt = formats[(p + i) % len(formats)]
            file = f"{i}.{ext}"
            crop.save(os.path.join(root, key, file), fmt)
            files.append(file)
        pages[key] = files
    bad = []
    if with_bad_files:
        # In the last pages: the first ones are held out of training by default.
        keys = sorted(pages)
        with open(os.path.join(root, keys[0], "0.jpg"), "rb") as f:
            jpeg = f.read()
        for page_key, file, data in [
            (keys[-1], "truncated.jpg", jpeg[: len(jpeg) // 3]),
            (keys[-2], "noise.png", rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()),
        ]:
            with open(os.path.join(root, page_key, file), "wb") as f:
                f.write(data)
            pages[page_key].append(file)
            bad.append(f"{page_key}/{file}")
        tiny_page = keys[-3]
        Image.new("RGB", (1, 1), (200, 30, 30)).save(os.path.join(root, tiny_page, "tiny.png"))
        pages[tiny_page].append("tiny.png")
        bad.append(f"{tiny_page}/tiny.png")
        os.makedirs(os.path.join(root, "zz_single"), exist_ok=True)
        Image.fromarray(_photo("coffee")).resize((size, size)).save(os.path.join(root, "zz_single", "only.jpg"))
        pages["zz_single"] = ["only.jpg"]
    return {"pages": pages, "bad": bad}
