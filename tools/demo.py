"""`make demo`: the shipped workflows on the embedded demo models, through a real headless ComfyUI.

What it does (several minutes on a busy 2-core CPU after `make setup`; --quick for a short run):
  1. writes the MNIST demo data (training/demo_data.py: 4,500 training digits, 500 held out) under OUT/data;
  2. uses the embedded models and encoder where they are: the pack registers models/demo/ as a model folder;
  3. starts ComfyUI headless (tools/hostctl.ComfyServer) and runs, converted with ui_to_api:
     - workflows/semantica_image_variations.json on held-out digits, with the pair-conditioned model and with its
       twin trained to reconstruct its condition (the paper's baseline), same seeds;
     - workflows/sdedit_stroke_painting.json on a coarse stroke painting made from a held-out digit;
     - workflows/sindiffusion_new_aspect_ratio.json and sindiffusion_outpainting.json on the embedded SinDiffusion
       model of scikit-image's rocket (a sample twice as wide, an outpaint);
  4. writes every image and a contact sheet (OUT/contact_sheet.png) and prints the metrics of
     `semantica eval variations` for the two models side by side (OUT/metrics.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from training import demo_data

REPO_ROOT = Path(__file__).resolve().parents[1]

MODELS_DIR = REPO_ROOT / "models" / "demo"  # the pack registers it as a ComfyUI model folder: nothing is copied
CLASSIFIER_PATH = REPO_ROOT / "models" / "eval" / "mnist-classifier.safetensors"
WORKFLOWS_DIR = REPO_ROOT / "workflows"
PAIRS_MODEL = "mnist-pairs.safetensors"
RECONSTRUCT_MODEL = "mnist-reconstruct.safetensors"
SINGLE_MODEL = "sindiffusion-rocket.safetensors"
ENCODER_FILE = "efficientnet-lite0.safetensors"


def log(message: str) -> None:
    print(message, flush=True)


def prompt_nodes(api: dict, class_type: str) -> list[str]:
    return [nid for nid, node in api.items() if node["class_type"] == class_type]


def set_inputs(api: dict, class_type: str, **values) -> str:
    """Sets widget values on the one node of `class_type`; returns its id."""
    ids = prompt_nodes(api, class_type)
    if len(ids) != 1:
        raise RuntimeError(f"expected one {class_type} node in the workflow, found {len(ids)}")
    api[ids[0]]["inputs"].update(values)
    return ids[0]


def load_workflow(name: str, object_info: dict) -> dict | None:
    from tools.hostctl import ui_to_api

    path = WORKFLOWS_DIR / name
    if not path.is_file():
        return None
    return ui_to_api(json.loads(path.read_text()), object_info)


def contact_sheet(rows: list[tuple[str, list[np.ndarray]]], path: Path, target: int = 128) -> None:
    """One labelled row per (title, images). Each image is enlarged by a whole factor (nearest, so pixels stay
    visible) that brings its short side near `target` px: 32 px digits and 75 px photos end up alike in size."""
    from PIL import Image, ImageDraw

    tiles = []
    for _, images in rows:
        row = []
        for image in images:
            tile = Image.fromarray(image if image.ndim == 3 else np.stack([image] * 3, -1)).convert("RGB")
            factor = max(1, round(target / min(tile.size)))
            row.append(tile.resize((tile.width * factor, tile.height * factor), Image.NEAREST))
        tiles.append(row)
    label_h, pad = 14, 4
    width = max(pad + sum(t.width + pad for t in row) for row in tiles)
    height = pad + sum(label_h + max(t.height for t in row) + pad for row in tiles)
    sheet = Image.new("RGB", (max(width, 320), height), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    for (title, _), row in zip(rows, tiles):
        draw.text((pad, y), title, fill="black")
        y += label_h
        x = pad
        for tile in row:
            sheet.paste(tile, (x, y))
            x += tile.width + pad
        y += max(t.height for t in row) + pad
    sheet.save(path)


def run_variations(client, object_info, model_name: str, digits: list[np.ndarray], count: int, steps: int,
                   seed: int) -> list[list[np.ndarray]]:
    """workflows/semantica_image_variations.json once on all digits, as LoadImage reads a multi-page image: one
    batch; returns count images per digit (variation k of digit j has seed + j * count + k, as alone)."""
    api = load_workflow("semantica_image_variations.json", object_info)
    name = client.upload_image([np.stack([digit] * 3, -1) for digit in digits], name="demo_digits.tiff")
    set_inputs(api, "LoadImage", image=name)
    set_inputs(api, "SemanticaEncoderLoader", encoder_name=ENCODER_FILE)
    set_inputs(api, "SemanticaUNetLoader", model_name=model_name, weights="ema")
    # Ancestral sampling: on these small models it keeps the digit's class more often than dpmpp_2m
    # (0.74 against 0.64 at 2,000 training steps, `semantica eval variations`).
    set_inputs(api, "SemanticaVariationSampler", seed=seed, count=count, steps=steps, width=0, height=0,
               sampler="euler_ancestral", spacing="karras")
    save_id = set_inputs(api, "SaveImage", filename_prefix=f"demo_{Path(model_name).stem}")
    images = client.get_images(client.run(api, timeout=PROMPT_TIMEOUT), save_id)
    if len(images) != len(digits) * count:
        raise RuntimeError(f"expected {len(digits) * count} variations from {model_name}, got {len(images)}")
    return [images[j * count:(j + 1) * count] for j in range(len(digits))]


def run_sdedit(client, object_info, model_name: str, painting: np.ndarray, steps: int, seed: int) -> list[np.ndarray]:
    api = load_workflow("sdedit_stroke_painting.json", object_info)
    name = client.upload_image(np.stack([painting] * 3, -1), name="demo_stroke_painting.png")
    set_inputs(api, "LoadImage", image=name)
    h, w = painting.shape
    set_inputs(api, "SemanticaImagePrep", width=w, height=h)
    set_inputs(api, "SemanticaUNetLoader", model_name=model_name, weights="ema")
    set_inputs(api, "SemanticaSDEdit", seed=seed, strength=0.6, steps=steps, repeats=1)
    for preview in prompt_nodes(api, "PreviewImage"):
        del api[preview]
    save_id = set_inputs(api, "SaveImage", filename_prefix="demo_sdedit")
    # Three seeds: the painting fixes the layout, the seed the details.
    images = []
    for k in range(3):
        api[prompt_nodes(api, "SemanticaSDEdit")[0]]["inputs"]["seed"] = seed + k
        images += client.get_images(client.run(api, timeout=PROMPT_TIMEOUT), save_id)
    return images


def training_picture(model_path: Path) -> np.ndarray:
    """The demo photo at the size and scale the SinDiffusion model was trained on (outpainting keeps that scale)."""
    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.single_image import training_size

    return demo_data.training_scale(demo_data.demo_photo(), max(training_size(load_checkpoint(model_path))))


SINGLE_WORKFLOWS = (  # workflow, title, node -> inputs (sizes relative to the training picture's width)
    ("sindiffusion_new_aspect_ratio.json", "SinDiffusion: a new size, twice as wide ({sampler}, {steps} steps)",
     {"SinDiffusionSample": lambda w: dict(width=2 * w, height=0, count=3, steps=50, sampler="dpmpp_2m")}),
    ("sindiffusion_outpainting.json", "SinDiffusion: outpainting, the photo kept in the middle ({sampler}, {steps} steps)",
     {"SinDiffusionOutpaint": lambda w: dict(left=w // 2, right=w // 2, top=0, bottom=0, steps=100,
                                             sampler="ddpm")}),
)


def run_single(client, object_info, models_dir: Path, seed: int, quick: bool):
    """A SinDiffusion sample at a new size and an outpaint of the embedded model's photo, through the shipped
    workflows. Returns (rows, why not) with rows [(title, images)]; the first row is the training picture."""
    model_path = models_dir / SINGLE_MODEL
    if not model_path.is_file():
        return [], f"no embedded SinDiffusion model ({model_path})"
    picture = training_picture(model_path)
    name = client.upload_image(picture, name="demo_sindiffusion_photo.png")
    height, width = picture.shape[:2]
    rows = [(f"SinDiffusion training picture ({width}x{height}, scikit-image rocket)", [picture])]
    for workflow, title, settings in SINGLE_WORKFLOWS:
        api = load_workflow(workflow, object_info)  # the templates load the embedded model
        if prompt_nodes(api, "LoadImage"):
            set_inputs(api, "LoadImage", image=name)
        for class_type, values in settings.items():
            values = values(width)
            if quick:
                values["steps"] = min(values["steps"], 10)
            set_inputs(api, class_type, seed=seed, **values)
            title = title.format(**values)
        save_id = set_inputs(api, "SaveImage", filename_prefix=f"demo_{Path(workflow).stem}")
        rows.append((title, client.get_images(client.run(api, timeout=PROMPT_TIMEOUT), save_id)))
    return rows, ""


# A guard against a hung server, not a speed target: one prompt takes under a minute on a quiet machine, more under load.
PROMPT_TIMEOUT = 900
SHEET_DIGITS = 10  # rows of digits on the contact sheet; the metrics use every digit


def variation_metrics(conditions: np.ndarray, labels: np.ndarray, results: dict, encoder, classifier,
                      seed: int) -> dict:
    """The `semantica eval variations` metrics of the server's images, in its result layout (one seed)."""
    import torch

    from training import eval_variations

    cond = torch.from_numpy(np.stack([conditions] * 3, 1)).float().div(255)
    cond_embeds = eval_variations.encode(encoder, cond)
    out = {"models": {}, "reference": {}, "seeds": [seed], "settings": {}}
    for name, per_digit in results.items():
        variations = torch.from_numpy(np.stack([np.stack(v) for v in per_digit])).float().div(255)
        variations = variations[..., :3].permute(0, 1, 4, 2, 3)  # [N, K, 3, H, W]
        out["settings"] = {"conditions": variations.shape[0], "per_condition": variations.shape[1]}
        metrics = eval_variations.variation_metrics(cond, cond_embeds, variations, torch.from_numpy(labels),
                                                    classifier, encoder)
        out["models"][name] = {"mean": metrics, "spread": {key: 0.0 for key in metrics}}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/demo", help="output folder")
    parser.add_argument("--quick", action="store_true", help="2 digits, fewer steps (the test's reduced demo)")
    # 50 x 4 = 200 variations per model: the printed figures are not the noise of a few dozen images.
    parser.add_argument("--digits", type=int, default=50, help="held-out digits to vary (one per class first)")
    parser.add_argument("--count", type=int, default=4, help="variations per digit")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (euler_ancestral for the variations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", default=None, help="ComfyUI base dir (default: $SEMANTICA_HOME/demo-base)")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.digits, args.steps = min(args.digits, 2), min(args.steps, 8)

    import torch

    from tools.hostctl import ComfyServer, pack_node_ids, semantica_home

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models_dir = MODELS_DIR
    for required in (PAIRS_MODEL, RECONSTRUCT_MODEL):
        if not (models_dir / required).is_file():
            raise SystemExit(
                f"demo: {models_dir / required} is missing; the demo models ship in models/demo/ "
                "(rebuild them with `make demo-models`, see models/demo/README.md)"
            )

    data_dir = out / "data"
    if not (data_dir / "heldout.jsonl").is_file():
        demo_data.write_dataset(str(data_dir))
    held_images, held_labels = demo_data.load_split(str(data_dir), "heldout")
    # One held-out digit per class first (the first of each class in the fixed split), then the next ones.
    order = sorted(range(len(held_labels)), key=lambda i: (list(held_labels[:i + 1]).count(held_labels[i]), held_labels[i]))
    chosen = order[: args.digits]
    digits = [(held_images[i, 0] * 255).round().byte().numpy() for i in chosen]
    labels = held_labels[chosen].numpy()
    log(f"[demo] {len(held_labels)} held-out digits in {data_dir}; varying classes {labels.tolist()}")

    base = Path(args.base) if args.base else semantica_home() / "demo-base"
    server = ComfyServer(base, log_path=out / "comfyui.log", cpu=True, port=args.port)
    server.start(timeout=180)
    timings = {"setup_seconds": round(time.perf_counter() - started, 1)}
    log(f"[demo] ComfyUI ready at {server.url} in {server.start_seconds:.1f}s (log {out / 'comfyui.log'})")
    rows: list[tuple[str, list[np.ndarray]]] = []
    notes = []
    try:
        server.check_nodes(pack_node_ids())
        client = server.client()
        object_info = client.object_info()
        results = {}
        for model_name, title in ((PAIRS_MODEL, "pairs"), (RECONSTRUCT_MODEL, "reconstruct")):
            t = time.perf_counter()
            results[title] = run_variations(client, object_info, model_name, digits, args.count, args.steps, args.seed)
            timings[f"variations_{title}_seconds"] = round(time.perf_counter() - t, 1)
            log(f"[demo] variations of {len(digits)} held-out digits with {model_name}: "
                f"{timings[f'variations_{title}_seconds']}s")
        for i, digit in enumerate(digits[:SHEET_DIGITS]):
            rows.append((f"held-out {labels[i]} | pair model x{args.count} | reconstruct model x{args.count}",
                         [digit] + results["pairs"][i] + results["reconstruct"][i]))

        t = time.perf_counter()
        # A 7 (simple strokes) when one is among the digits.
        painting = demo_data.stroke_painting(digits[list(labels).index(7)] if 7 in labels else digits[0])
        edited = run_sdedit(client, object_info, PAIRS_MODEL, painting, args.steps, args.seed)
        timings["sdedit_seconds"] = round(time.perf_counter() - t, 1)
        rows.append(("stroke painting -> SDEdit (strength 0.6, 3 seeds)", [painting] + edited))
        log(f"[demo] SDEdit of a stroke painting: {timings['sdedit_seconds']}s")

        t = time.perf_counter()
        single_rows, why_not = run_single(client, object_info, models_dir, args.seed, args.quick)
        rows += single_rows
        if why_not:
            notes.append(f"SinDiffusion skipped: {why_not}")
            log(f"[demo] SinDiffusion skipped: {why_not}")
        else:
            timings["sindiffusion_seconds"] = round(time.perf_counter() - t, 1)
    finally:
        server.stop()

    for r, (title, images) in enumerate(rows):
        from PIL import Image

        for c, image in enumerate(images):
            Image.fromarray(image).save(out / f"row{r:02d}_{c:02d}.png")
    contact_sheet(rows, out / "contact_sheet.png")

    from semantica_core.encoders import load_encoder
    from training.eval_variations import format_table, load_classifier

    classifier = None
    if CLASSIFIER_PATH.is_file():
        classifier, classifier_info = load_classifier(str(CLASSIFIER_PATH))
    encoder = load_encoder(models_dir / "encoders" / ENCODER_FILE)
    metrics = variation_metrics(np.stack(digits), labels, results, encoder, classifier, args.seed)
    timings["total_seconds"] = round(time.perf_counter() - started, 1)
    metrics.update(timings=timings, notes=notes, digits=labels.tolist(), steps=args.steps, count=args.count)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log("")
    log(f"Variations of {len(digits)} held-out digits, {args.count} each, {args.steps} steps "
        f"(pair-conditioned model vs the same network trained to reconstruct its condition):")
    log(format_table(metrics, {"pairs": "pairs", "reconstruct": "reconstruct"}))
    log("")
    log(f"[demo] wrote {len(rows)} rows of images and {out / 'contact_sheet.png'}; metrics in {out / 'metrics.json'}")
    log(f"[demo] done in {timings['total_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
