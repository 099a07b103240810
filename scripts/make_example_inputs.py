"""Write the example images the templates load (assets/inputs/), from the demo data's held-out digits and photos.

ComfyUI's LoadImage lists only the server's input folder, so the pack copies these files there at start-up
(nodes/folders.install_example_inputs) under names that start with `semantica_example_`. They are committed; this
script says how they were made and makes them again:

  semantica_example_digit.png           a held-out MNIST 4 (32 px), the condition of the variation templates
  semantica_example_digit_b.png         a held-out MNIST 9, the second image of the mixing template
  semantica_example_stroke_painting.png a coarse block painting of a held-out 7 (SDEdit's guide)
  semantica_example_masked_digit.png    a held-out 7 whose lower half is transparent (LoadImage's MASK: what changes)
  semantica_example_rocket.png          scikit-image's rocket (NASA, public domain) at the embedded SinDiffusion
                                        model's scale, 112 x 75 (outpainting keeps that scale)
  semantica_example_rocket_masked.png   the same with a transparent square where an object is pasted in
  semantica_example_object.png          scikit-image's coffee photo (public domain) at that size: the pasted object
  semantica_example_photo.png           the rocket at 640 x 427, the picture the in-graph training template learns

Usage: python scripts/make_example_inputs.py [--out assets/inputs]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_demo_data  # noqa: E402  (a sibling script)

ROCKET_SIZE = (112, 75)  # the embedded sindiffusion-rocket model's training size


def stroke_painting(digit: np.ndarray, cell: int = 4) -> np.ndarray:
    """Blocks of `cell` px where the [32, 32] digit has ink, as a broad brush would paint it."""
    h, w = digit.shape
    blocks = digit.reshape(h // cell, cell, w // cell, cell).mean((1, 3))
    strokes = np.where(blocks > 80, 200, 0).astype(np.uint8)
    return np.kron(strokes, np.ones((cell, cell), dtype=np.uint8))


def training_scale(photo: np.ndarray) -> np.ndarray:
    """The photo as SinDiffusion training resizes it for the embedded model (long side 112 px)."""
    import torch

    from semantica_core.single_image import prepare_training_image

    picture = torch.from_numpy(photo.copy()).permute(2, 0, 1).float().div(255)
    prepared = prepare_training_image(picture, max(ROCKET_SIZE))[0].add(1).mul(127.5).round().clamp(0, 255)
    assert tuple(prepared.shape[1:]) == ROCKET_SIZE[::-1], prepared.shape
    return prepared.byte().permute(1, 2, 0).numpy()


def first_heldout(digits: np.ndarray, labels: np.ndarray, held: np.ndarray, label: int) -> np.ndarray:
    return digits[next(i for i in held if labels[i] == label)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join("assets", "inputs"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    def save(name: str, array: np.ndarray, mode: str) -> None:
        Image.fromarray(array, mode).save(os.path.join(args.out, f"semantica_example_{name}.png"))

    digits, labels = make_demo_data.load_mnist()
    held = make_demo_data.heldout_indices(labels, 500, 0)  # the demo's held-out split: never trained on
    gray = lambda d: np.stack([d] * 3, -1)  # noqa: E731
    save("digit", gray(first_heldout(digits, labels, held, 4)), "RGB")
    save("digit_b", gray(first_heldout(digits, labels, held, 9)), "RGB")
    seven = first_heldout(digits, labels, held, 7)
    save("stroke_painting", gray(stroke_painting(seven)), "RGB")
    alpha = np.full(seven.shape, 255, np.uint8)
    alpha[16:] = 0
    save("masked_digit", np.concatenate([gray(seven), alpha[..., None]], -1), "RGBA")

    import skimage.data

    photo = Image.fromarray(make_demo_data.demo_photo())
    save("photo", np.asarray(photo), "RGB")
    rocket = training_scale(make_demo_data.demo_photo())
    save("rocket", rocket, "RGB")
    hole = np.full(rocket.shape[:2], 255, np.uint8)
    hole[40:64, 12:36] = 0  # on the ground, left of the rocket
    save("rocket_masked", np.concatenate([rocket, hole[..., None]], -1), "RGBA")
    coffee = Image.fromarray(skimage.data.coffee()).resize(ROCKET_SIZE, Image.BICUBIC)
    save("object", np.asarray(coffee), "RGB")
    print(f"wrote {len(os.listdir(args.out))} example images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
