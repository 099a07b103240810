"""`semantica eval variations`: semantic consistency, diversity and few-shot Fréchet distance of variation models.

For each model: condition on images of a held-out set, sample K variations of each, and report
  consistency   classifier agreement between the condition's label and its variations' predicted labels (with a
                classifier and labels), and the encoder's cosine similarity of condition and variation (always),
                beside the similarity of unrelated held-out images (the floor);
  diversity     mean pairwise pixel L1 among the variations of one condition, and their L1 to the condition
                (0 = copies);
  few-shot FD   condition on k held-out images, generate, and take the Fréchet distance to the whole held-out set in
                the digit classifier's feature space (no model's own encoder), beside the same distance for as many
                real held-out images.
Every figure is a mean with its spread (standard deviation) over --seeds; by default every held-out image is a
condition. Several --model files (each with its own --encoder, or one for all) are evaluated on the same conditions,
seeds and reference features and printed side by side.
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
        return self.head(self.features(self._gray(images) * 2 - 1).flatten(1))

    @staticmethod
    def _gray(images: torch.Tensor) -> torch.Tensor:
        return images.mean(1, keepdim=True) if images.shape[1] != 1 else images

    @torch.no_grad()
    def feature_vectors(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """[N, 2 * width] features (the last conv layer, averaged over its grid): the space of the few-shot Fréchet
        distance, which belongs to no model's condition encoder, so no model is judged by its own encoder."""
        self.eval()
        return torch.cat(
            [self.features(self._gray(chunk.float()) * 2 - 1).mean((2, 3)) for chunk in images.split(batch)]
        )

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
    reference_features: Optional[torch.Tensor],
    few_shot_embeds,
    *,
    per_condition: int = 4,
    few_shot_per: int = 20,
    steps: int = 30,
    guidance: float = 3.0,
    sampler: str = "euler_ancestral",
    seed: int = 0,
    batch: int = 64,
    log=None,
) -> tuple[dict, torch.Tensor]:
    """Metrics of one model at one seed and its variations [N, K, 3, H, W] of `conditions` [N, 3, H, W] (at the
    model's size).

    The conditions' embeddings (in the model's encoder) are given so several seeds share them; `few_shot_embeds` are
    the k conditions of the few-shot Fréchet distance, compared with `reference_features` (classifier features of the
    whole held-out set; None to skip)."""
    from semantica_core.imageops import to_rgb
    from semantica_core.metrics import variations as vm
    from semantica_core.pipeline import sample_variations

    def generate(embeds, count, first_seed, what):
        rows_per_batch = max(1, batch // count)
        out = []
        for start in range(0, len(embeds), rows_per_batch):
            chunk = embeds.select(torch.arange(start, min(start + rows_per_batch, len(embeds))))
            images = sample_variations(model, chunk, seed=first_seed + start * count, count=count, steps=steps,
                                       guidance=guidance, sampler=sampler)
            out.append(to_rgb(images.cpu()))
            if log:
                log(f"[eval] seed {seed}: {what} {min(start + rows_per_batch, len(embeds))}/{len(embeds)}")
        return torch.cat(out)

    started = time.perf_counter()
    n, k = len(conditions), per_condition
    flat = generate(condition_embeds, k, seed, "conditions")
    sample_seconds = time.perf_counter() - started
    variations = vm.group_variations(flat, k)
    metrics = variation_metrics(conditions, condition_embeds, variations, labels, classifier, encoder)
    if few_shot_embeds is not None and reference_features is not None:
        few = generate(few_shot_embeds, few_shot_per, seed + 1_000_000, "few-shot conditions")
        metrics["few_shot_samples"] = len(few)
        metrics["few_shot_fd"] = float(vm.few_shot_frechet(classifier.feature_vectors(few), reference_features))
    metrics["sampling_seconds"] = round(sample_seconds, 2)
    return metrics, variations


def variation_metrics(conditions, condition_embeds, variations, labels, classifier, encoder) -> dict:
    """Consistency and diversity of variations [N, K, 3, H, W] of `conditions` [N, 3, H, W] (whose embeddings in
    the model's encoder are given); the classifier figures need labels and a classifier."""
    from semantica_core.metrics import variations as vm

    n, k = variations.shape[:2]
    flat = variations.reshape(n * k, *variations.shape[2:])
    metrics: dict = {"conditions": n, "per_condition": k}
    if classifier is not None and labels is not None:
        predicted = classifier.predict(flat).reshape(n, k)
        metrics["consistency_classifier"] = float(vm.label_agreement(labels, predicted))
        cond_predicted = classifier.predict(conditions)
        metrics["consistency_classifier_vs_condition_prediction"] = float(vm.label_agreement(cond_predicted, predicted))
        metrics["classifier_accuracy_on_conditions"] = float((cond_predicted == labels).double().mean())
        # Where the misses are: on the demo digits they gather in one class (a 5 drawn as a 3), not spread evenly.
        per_class = vm.per_class_agreement(labels, predicted, classifier.num_classes)
        metrics.update({f"consistency_class_{c}": float(v) for c, v in enumerate(per_class) if not torch.isnan(v)})
    variation_features = encode(encoder, flat).pooled.reshape(n, k, -1)
    metrics["consistency_encoder_cosine"] = float(vm.feature_consistency(condition_embeds.pooled, variation_features))
    metrics["unrelated_encoder_cosine"] = float(vm.baseline_similarity(condition_embeds.pooled))
    metrics["diversity_l1"] = float(vm.variation_diversity(variations, "l1"))
    metrics["distance_to_condition_l1"] = float(vm.distance_to_condition(conditions, variations, "l1"))
    return metrics


def mean_and_spread(per_seed: list[dict]) -> tuple[dict, dict]:
    """(mean, standard deviation over seeds) of every numeric metric; the spread is 0 for one seed."""
    # Only what every seed has: a class can be missing from one seed's random draw of conditions.
    keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and all(k in m for m in per_seed)]
    values = {k: torch.tensor([float(m[k]) for m in per_seed], dtype=torch.float64) for k in keys}
    mean = {k: float(v.mean()) for k, v in values.items()}
    spread = {k: float(v.std(unbiased=True)) if len(v) > 1 else 0.0 for k, v in values.items()}
    return mean, spread


def check_encoder_fits(model, encoder, model_path: str, encoder_path: str) -> None:
    info = model.encoder_info or {}
    if info.get("encoder_id") and info["encoder_id"] != encoder.encoder_id:
        raise ValueError(
            f"{model_path} was trained with encoder {info['encoder_id']} but {encoder_path} is {encoder.encoder_id}: "
            "give each --model its own --encoder, in the same order"
        )


@torch.no_grad()
def evaluate(
    model_paths: list[str],
    encoder_paths,
    data: str,
    classifier_path: Optional[str] = None,
    *,
    conditions: int = 0,
    per_condition: int = 4,
    few_shot_k: int = 10,
    few_shot_per: int = 20,
    steps: int = 30,
    guidance: float = 3.0,
    sampler: str = "euler_ancestral",
    seeds=(0, 1, 2),
    log=print,
) -> dict:
    """Evaluate each model on the same held-out conditions at each seed; returns {"models": {path: {"mean", "spread",
    "seeds", "training", "encoder"}}, "reference": {...}}.

    encoder_paths: one encoder file for all models, or one per model (models trained with different encoders).
    conditions: 0 = every held-out image; else that many, drawn per seed. The exported function other commands and
    the demo call (`semantica eval variations` wraps it)."""
    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.encoders import load_encoder
    from semantica_core.imageops import fit_image
    from semantica_core.metrics import variations as vm

    log = log or (lambda message: None)
    encoder_paths = [encoder_paths] if isinstance(encoder_paths, (str, os.PathLike)) else list(encoder_paths)
    if len(encoder_paths) not in (1, len(model_paths)):
        raise ValueError(f"give one --encoder for all models or one per model; got {len(encoder_paths)} encoders for "
                         f"{len(model_paths)} models")
    encoder_paths = encoder_paths * len(model_paths) if len(encoder_paths) == 1 else encoder_paths
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("give at least one seed")
    images, labels = load_eval_images(data)
    classifier, classifier_info = (None, {})
    if classifier_path:
        classifier, classifier_info = load_classifier(classifier_path)
        if labels is None:
            log(f"[eval] {data} has no labels: the classifier consistency is skipped")
    else:
        log("[eval] no --classifier: the classifier consistency and the few-shot FD (in its feature space) are skipped")
    count = len(images) if conditions <= 0 else min(conditions, len(images))
    orders = {s: torch.randperm(len(images), generator=torch.Generator().manual_seed(s)) for s in seeds}
    chosen = {s: (torch.arange(len(images)) if count == len(images) else orders[s][:count]) for s in seeds}
    few_index = {s: orders[s][-min(few_shot_k, len(images)):] for s in seeds} if few_shot_k > 0 else None
    log(f"[eval] {len(images)} images from {data}; {count} conditions x {per_condition} variations x seeds {seeds}")

    result: dict = {"data": data, "classifier": classifier_info, "seeds": seeds, "models": {}, "reference": {},
                    "settings": {"conditions": count, "per_condition": per_condition, "few_shot_k": few_shot_k,
                                 "few_shot_per": few_shot_per, "steps": steps, "guidance": guidance,
                                 "sampler": sampler}}
    reference = classifier.feature_vectors(images) if classifier is not None and few_index is not None else None
    if reference is not None:
        # The floor: as many real held-out images as the models generate, against the whole set.
        floors = [float(vm.few_shot_frechet(reference[orders[s][: few_shot_k * few_shot_per]], reference))
                  for s in seeds]
        mean, spread = mean_and_spread([{"few_shot_fd": f} for f in floors])
        result["reference"] = {"few_shot_fd_real_images": mean["few_shot_fd"],
                               "few_shot_fd_real_images_spread": spread["few_shot_fd"]}

    encoders: dict = {}
    for path, encoder_path in zip(model_paths, encoder_paths):
        started = time.perf_counter()
        if encoder_path not in encoders:
            encoder = load_encoder(encoder_path)
            encoders[encoder_path] = (encoder, encode(encoder, images))
        encoder, all_embeds = encoders[encoder_path]
        model = load_checkpoint(path)
        check_encoder_fits(model, encoder, path, encoder_path)
        size = model.resolution or images.shape[-1]
        fitted = fit_image(images, size, size, mode="resize") if images.shape[-1] != size else images
        per_seed = []
        for s in seeds:
            metrics, _ = evaluate_model(
                model, encoder, fitted[chosen[s]], all_embeds.select(chosen[s]),
                labels[chosen[s]] if labels is not None else None, classifier, reference,
                all_embeds.select(few_index[s]) if few_index is not None else None,
                per_condition=per_condition, few_shot_per=few_shot_per, steps=steps, guidance=guidance,
                sampler=sampler, seed=s, log=log,
            )
            per_seed.append(metrics)
        mean, spread = mean_and_spread(per_seed)
        result["models"][path] = {"mean": mean, "spread": spread, "seeds": per_seed, "encoder": encoder.encoder_id,
                                  "training": training_summary(path)}
        log(f"[eval] {os.path.basename(path)}: {len(seeds)} seeds in {time.perf_counter() - started:.0f}s")
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
    ("consistency_encoder_cosine", "consistency: cosine in the model's own encoder", "{:.3f}"),
    ("unrelated_encoder_cosine", "  (the same cosine for unrelated held-out images)", "{:.3f}"),
    ("diversity_l1", "diversity: mean pairwise pixel L1 among variations", "{:.4f}"),
    ("distance_to_condition_l1", "distance to the condition: pixel L1 (0 = copies)", "{:.4f}"),
    ("few_shot_fd", "few-shot Frechet distance (classifier features)", "{:.2f}"),
    ("sampling_seconds", "sampling seconds per seed", "{:.1f}"),
]


def model_label(path: str) -> str:
    """The file's name, or its run folder's where it is a run's `model.safetensors`."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.basename(os.path.dirname(os.path.abspath(path))) if stem == "model" else stem


def format_table(result: dict, names: Optional[dict] = None) -> str:
    """The models side by side, one metric per row, each as mean ± spread over the seeds."""
    paths = list(result["models"])
    names = names or {}
    headers = [names.get(p) or model_label(p) for p in paths]
    width = max(16, *(len(h) for h in headers))
    label_width = max(len(label) for _, label, _ in ROWS)

    seeds = result.get("seeds", [])

    def cell(mean, spread, fmt):
        if mean is None:
            return "-"
        return f"{fmt.format(mean)} ± {fmt.format(spread)}" if len(seeds) > 1 else fmt.format(mean)

    settings = result.get("settings", {})
    spread_note = f"mean ± standard deviation over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds}"
    lines = [f"{spread_note}; {settings.get('conditions')} conditions x {settings.get('per_condition')} variations"
             + (" per seed" if len(seeds) > 1 else ""),
             " " * label_width + "  " + "  ".join(h.rjust(width) for h in headers)]
    for key, label, fmt in ROWS:
        values = [(result["models"][p]["mean"].get(key), result["models"][p]["spread"].get(key)) for p in paths]
        if all(m is None for m, _ in values):
            continue
        lines.append(label.ljust(label_width) + "  " + "  ".join(cell(m, s, fmt).rjust(width) for m, s in values))
    real = result.get("reference", {}).get("few_shot_fd_real_images")
    if real is not None:
        spread = result["reference"].get("few_shot_fd_real_images_spread", 0.0)
        label = "  (few-shot FD of as many real held-out images)"
        lines.append(f"{label.ljust(label_width)}  {cell(real, spread, '{:.2f}').rjust(width)}")
    for path, header in zip(paths, headers):
        mean = result["models"][path]["mean"]
        classes = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in mean.items() if k.startswith("consistency_class_"))
        if classes:
            lines.append(f"consistency by the condition's class, {header}: "
                         + "  ".join(f"{c}: {v:.2f}" for c, v in classes))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, help="model file (repeat to compare models)")
    parser.add_argument("--encoder", action="append", required=True,
                        help="the encoder file the models were trained with: once for all, or once per --model")
    parser.add_argument("--data", required=True,
                        help="held-out images: a JSONL manifest ({'path', 'label'} per line) or a folder of images")
    parser.add_argument("--classifier", help="digit classifier file: label-agreement consistency and the few-shot FD")
    parser.add_argument("--conditions", type=int, default=0,
                        help="held-out images to condition on (default 0 = all of them)")
    parser.add_argument("--per-condition", type=int, default=4, help="variations of each condition (>= 2)")
    parser.add_argument("--few-shot-k", type=int, default=10, help="conditions of the few-shot FD (0 = skip)")
    parser.add_argument("--few-shot-per", type=int, default=20, help="samples per few-shot condition")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--sampler", default="euler_ancestral")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; figures are mean ± spread over them")
    parser.add_argument("--json", help="write the metrics to this JSON file")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers like 0,1,2; got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds needs at least one seed")
    return seeds


def run(args) -> int:
    if args.per_condition < 2:
        raise ValueError("--per-condition must be at least 2 (diversity compares variations of one condition)")
    result = evaluate(
        args.model, args.encoder, args.data, args.classifier, conditions=args.conditions,
        per_condition=args.per_condition, few_shot_k=args.few_shot_k, few_shot_per=args.few_shot_per,
        steps=args.steps, guidance=args.guidance, sampler=args.sampler, seeds=parse_seeds(args.seeds),
        log=lambda m: print(m, file=sys.stderr),
    )
    print(format_table(result))
    if args.json:
        write_json_atomic(args.json, result, indent=2)
    return 0
