"""`semantica eval variations`: semantic consistency, diversity and few-shot Fréchet distance of variation models.

For each model: condition on images of a held-out set, sample K variations of each, and report
  consistency   classifier agreement between the condition's label and its variations' predicted labels (with a
                classifier and labels), and the encoder's cosine similarity of condition and variation (always),
                beside the similarity of unrelated held-out images (the floor);
  diversity     mean pairwise pixel L1 among the variations of one condition, and their L1 to the condition
                (0 = copies);
  few-shot FD   condition on k held-out images, generate, and take the Fréchet distance to the whole held-out set in
                the encoder's pooled feature space, beside the same distance for as many real held-out images.
Several --model files are evaluated on the same conditions, seeds and reference features and printed side by side.
The metric math is in semantica_core.metrics.variations; this file loads, samples and reports.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from semantica_core.atomic import write_json_atomic

CLASSIFIER_KIND = "semantica.digit_classifier"


# ----------------------------------------------------------------------------------------------------------------
# A small classifier for the consistency metric on labelled grayscale data (the demo's MNIST digits)


class DigitClassifier(nn.Module):
    """Three conv layers and a linear head on [B, 1 or 3, H, W] images in [0, 1] (colour is averaged to gray).

    The head sees a 4x4 grid of features, not one global average: where a stroke is tells a 6 from a 9."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.num_classes, self.width = num_classes, width
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(2 * width * 16, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != 1:
            images = images.mean(1, keepdim=True)
        return self.head(self.features(images * 2 - 1).flatten(1))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        self.eval()
        return torch.cat([self(chunk.float()).argmax(1) for chunk in images.split(batch)])


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, steps: int = 2000, batch: int = 64, lr: float = 2e-3, seed: int = 0,
    log=print,
) -> DigitClassifier:
    """Adam with a cosine learning rate on random batches with ±2 px shifts (the classifier must not rely on exact
    placement)."""
    torch.manual_seed(seed)
    net = DigitClassifier(int(labels.max()) + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(len(images), (batch,), generator=generator)
        x = images[index]
        dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(net(x), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if log and (step + 1) % 100 == 0:
            log(f"[classifier] step {step + 1}/{steps} loss {loss.item():.3f}")
    return net.eval()


def save_classifier(path: str, net: DigitClassifier, info: dict) -> None:
    from semantica_core.checkpoint import write_safetensors_atomic

    metadata = {"kind": CLASSIFIER_KIND, "num_classes": str(net.num_classes), "width": str(net.width),
                "info": json.dumps(info)}
    write_safetensors_atomic(path, {k: v.contiguous() for k, v in net.state_dict().items()}, metadata)


def load_classifier(path: str) -> tuple[DigitClassifier, dict]:
    """(classifier, info) from a file written by save_classifier."""
    from semantica_core.checkpoint import load_safetensors_tensors, read_safetensors_header

    _, metadata = read_safetensors_header(path, what="classifier")
    if metadata.get("kind") != CLASSIFIER_KIND:
        raise ValueError(
            f"{path} is not a Semantica digit classifier (metadata kind {metadata.get('kind')!r}); make one with "
            "`python -m training.demo_data --classifier-out FILE`"
        )
    net = DigitClassifier(int(metadata["num_classes"]), int(metadata["width"]))
    net.load_state_dict(load_safetensors_tensors(path, what="classifier"))
    return net.eval().requires_grad_(False), json.loads(metadata.get("info", "{}"))


# ----------------------------------------------------------------------------------------------------------------
# Data


def load_eval_images(spec: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """([N, 3, H, W] float in [0, 1], labels [N] or None) from a JSONL manifest (`{"path": ..., "label": ...}` per
    line, paths relative to the manifest) or a folder of images (no labels). All images must share one size."""
    from semantica_core.image_files import is_image_name, load_image_file

    if os.path.isdir(spec):
        names = sorted(n for n in os.listdir(spec) if is_image_name(n))
        rows = [{"path": os.path.join(spec, n)} for n in names]
    elif os.path.isfile(spec):
        base = os.path.dirname(os.path.abspath(spec))
        with open(spec, encoding="utf-8") as manifest:
            rows = [json.loads(line) for line in manifest if line.strip()]
        for row in rows:
            row["path"] = os.path.join(base, row["path"])
    else:
        raise FileNotFoundError(f"evaluation data not found: {spec} (a folder of images or a JSONL manifest)")
    if not rows:
        raise ValueError(f"{spec} holds no images")
    loaded = [load_image_file(row["path"]) for row in rows]
    sizes = {tuple(image.shape[-2:]) for image in loaded}
    if len(sizes) != 1:
        raise ValueError(f"{spec}: evaluation images must share one size; found {sorted(sizes)[:3]} (height, width)")
    images = torch.stack(loaded)
    labels = torch.tensor([int(row["label"]) for row in rows]) if all("label" in row for row in rows) else None
    return images, labels


@torch.no_grad()
def encode(encoder, images: torch.Tensor, batch: int = 50):
    """Embeds of [N, 3, H, W] images in [0, 1], batched."""
    from semantica_core.embeds import Embeds

    return Embeds.cat([encoder(chunk) for chunk in images.split(batch)])


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_model(
    model,
    encoder,
    conditions: torch.Tensor,
    condition_embeds,
    labels: Optional[torch.Tensor],
    classifier: Optional[DigitClassifier],
    reference_features: torch.Tensor,
    few_shot_embeds,
    *,
    per_condition: int = 4,
    few_shot_per: int = 10,
    steps: int = 20,
    guidance: float = 3.0,
    sampler: str = "dpmpp_2m",
    seed: int = 0,
    batch: int = 64,
) -> tuple[dict, torch.Tensor]:
    """Metrics of one model and its variations [N, K, 3, H, W] of `conditions` [N, 3, H, W] (at the model's size).

    The conditions' embeddings are given so several models share them; `few_shot_embeds` are the k conditions of
    the few-shot Fréchet distance (None to skip it)."""
    from semantica_core.imageops import to_rgb
    from semantica_core.metrics import variations as vm
    from semantica_core.pipeline import sample_variations

    def generate(embeds, count, first_seed):
        rows_per_batch = max(1, batch // count)
        out = []
        for start in range(0, len(embeds), rows_per_batch):
            chunk = embeds.select(torch.arange(start, min(start + rows_per_batch, len(embeds))))
            images = sample_variations(model, chunk, seed=first_seed + start * count, count=count, steps=steps,
                                       guidance=guidance, sampler=sampler)
            out.append(to_rgb(images.cpu()))
        return torch.cat(out)

    started = time.perf_counter()
    n, k = len(conditions), per_condition
    flat = generate(condition_embeds, k, seed)
    sample_seconds = time.perf_counter() - started
    variations = vm.group_variations(flat, k)
    metrics: dict = {"conditions": n, "per_condition": k, "steps": steps, "guidance": guidance, "sampler": sampler}

    if classifier is not None and labels is not None:
        predicted = classifier.predict(flat).reshape(n, k)
        metrics["consistency_classifier"] = float(vm.label_agreement(labels, predicted))
        cond_predicted = classifier.predict(conditions)
        metrics["consistency_classifier_vs_condition_prediction"] = float(vm.label_agreement(cond_predicted, predicted))
        metrics["classifier_accuracy_on_conditions"] = float((cond_predicted == labels).double().mean())
    variation_features = encode(encoder, flat).pooled.reshape(n, k, -1)
    metrics["consistency_encoder_cosine"] = float(vm.feature_consistency(condition_embeds.pooled, variation_features))
    metrics["unrelated_encoder_cosine"] = float(vm.baseline_similarity(condition_embeds.pooled))
    metrics["diversity_l1"] = float(vm.variation_diversity(variations, "l1"))
    metrics["distance_to_condition_l1"] = float(vm.distance_to_condition(conditions, variations, "l1"))
    if few_shot_embeds is not None:
        few = generate(few_shot_embeds, few_shot_per, seed + 1_000_000)
        metrics["few_shot_k"] = len(few_shot_embeds)
        metrics["few_shot_samples"] = len(few)
        metrics["few_shot_fd"] = float(vm.few_shot_frechet(encode(encoder, few).pooled, reference_features))
    metrics["sampling_seconds"] = round(sample_seconds, 2)
    return metrics, variations


@torch.no_grad()
def evaluate(
    model_paths: list[str],
    encoder_path: str,
    data: str,
    classifier_path: Optional[str] = None,
    *,
    conditions: int = 50,
    per_condition: int = 4,
    few_shot_k: int = 10,
    few_shot_per: int = 10,
    steps: int = 20,
    guidance: float = 3.0,
    sampler: str = "dpmpp_2m",
    seed: int = 0,
    log=print,
) -> dict:
    """Evaluate each model on the same held-out conditions; returns {"models": {path: metrics}, "reference": {...}}.

    The exported function other commands and the demo call (`semantica eval variations` wraps it)."""
    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.encoders import load_encoder
    from semantica_core.imageops import fit_image
    from semantica_core.metrics import variations as vm

    log = log or (lambda message: None)
    encoder = load_encoder(encoder_path)
    images, labels = load_eval_images(data)
    classifier, classifier_info = (None, {})
    if classifier_path:
        classifier, classifier_info = load_classifier(classifier_path)
        if labels is None:
            log(f"[eval] {data} has no labels: the classifier consistency is skipped")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    chosen = order[: min(conditions, len(images))]
    few_index = order[-min(few_shot_k, len(images)):] if few_shot_k > 0 else None
    log(f"[eval] {len(images)} images from {data}; {len(chosen)} conditions x {per_condition} variations; "
        f"encoder {encoder.encoder_id}")

    started = time.perf_counter()
    reference = encode(encoder, images).pooled
    condition_embeds = encode(encoder, images[chosen])
    few_embeds = encode(encoder, images[few_index]) if few_index is not None else None
    result: dict = {"data": data, "encoder": encoder.encoder_id, "classifier": classifier_info, "models": {},
                    "reference": {}}
    if few_index is not None:
        # The floor: as many real held-out images as the models generate, against the whole set.
        real = reference[order[: min(len(images), len(few_index) * few_shot_per)]]
        result["reference"]["few_shot_fd_real_images"] = float(vm.few_shot_frechet(real, reference))
    log(f"[eval] encoded the held-out set in {time.perf_counter() - started:.1f}s")

    for path in model_paths:
        model = load_checkpoint(path)
        size = model.resolution or images.shape[-1]
        conds = fit_image(images[chosen], size, size, mode="resize") if images.shape[-1] != size else images[chosen]
        metrics, _ = evaluate_model(
            model, encoder, conds, condition_embeds, labels[chosen] if labels is not None else None, classifier,
            reference, few_embeds, per_condition=per_condition, few_shot_per=few_shot_per, steps=steps,
            guidance=guidance, sampler=sampler, seed=seed,
        )
        metrics["training"] = training_summary(path)
        result["models"][path] = metrics
        log(f"[eval] {os.path.basename(path)}: done in {metrics['sampling_seconds']}s of sampling")
    return result


def training_summary(path: str) -> dict:
    """What the checkpoint's metadata says about its training (pairing, steps, preset), when it says it."""
    from semantica_core.checkpoint import read_safetensors_header

    _, metadata = read_safetensors_header(path)
    try:
        info = json.loads(metadata.get("training") or "null") or {}
    except ValueError:
        info = {}
    return {k: info[k] for k in ("pairing", "steps", "preset", "images_seen") if k in info}


ROWS = [
    ("consistency_classifier", "consistency: classifier agrees with the condition's label", "{:.3f}"),
    ("consistency_encoder_cosine", "consistency: encoder cosine, condition vs variation", "{:.3f}"),
    ("unrelated_encoder_cosine", "  (encoder cosine of unrelated held-out images)", "{:.3f}"),
    ("diversity_l1", "diversity: mean pairwise L1 among variations", "{:.4f}"),
    ("distance_to_condition_l1", "diversity: mean L1 to the condition (0 = copies)", "{:.4f}"),
    ("few_shot_fd", "few-shot Frechet distance (encoder pooled)", "{:.2f}"),
    ("sampling_seconds", "sampling seconds", "{:.1f}"),
]


def format_table(result: dict, names: Optional[dict] = None) -> str:
    """The models side by side, one metric per row."""
    paths = list(result["models"])
    names = names or {}
    headers = [names.get(p) or os.path.splitext(os.path.basename(p))[0] for p in paths]
    width = max(12, *(len(h) for h in headers))
    label_width = max(len(label) for _, label, _ in ROWS)
    lines = [" " * label_width + "  " + "  ".join(h.rjust(width) for h in headers)]
    for key, label, fmt in ROWS:
        values = [result["models"][p].get(key) for p in paths]
        if all(v is None for v in values):
            continue
        cells = [(fmt.format(v) if v is not None else "-").rjust(width) for v in values]
        lines.append(label.ljust(label_width) + "  " + "  ".join(cells))
    real = result.get("reference", {}).get("few_shot_fd_real_images")
    if real is not None:
        lines.append(f"{'  (few-shot FD of as many real held-out images)'.ljust(label_width)}  {real:.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, help="model file (repeat to compare models)")
    parser.add_argument("--encoder", required=True, help="the encoder file the models were trained with")
    parser.add_argument("--data", required=True,
                        help="held-out images: a JSONL manifest ({'path', 'label'} per line) or a folder of images")
    parser.add_argument("--classifier", help="digit classifier file for the label-agreement consistency")
    parser.add_argument("--conditions", type=int, default=50, help="held-out images to condition on")
    parser.add_argument("--per-condition", type=int, default=4, help="variations of each condition (>= 2)")
    parser.add_argument("--few-shot-k", type=int, default=10, help="conditions of the few-shot FD (0 = skip)")
    parser.add_argument("--few-shot-per", type=int, default=10, help="samples per few-shot condition")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the metrics to this JSON file")


def run(args) -> int:
    if args.per_condition < 2:
        raise ValueError("--per-condition must be at least 2 (diversity compares variations of one condition)")
    result = evaluate(
        args.model, args.encoder, args.data, args.classifier, conditions=args.conditions,
        per_condition=args.per_condition, few_shot_k=args.few_shot_k, few_shot_per=args.few_shot_per,
        steps=args.steps, guidance=args.guidance, sampler=args.sampler, seed=args.seed,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(format_table(result))
    if args.json:
        write_json_atomic(args.json, result, indent=2)
    return 0
