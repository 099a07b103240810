"""`semantica eval single MODEL [MODEL ...]`: SIFID and diversity of single-image (SinDiffusion) models.

For each model, N samples at its training size are compared with its training image (from --images, in the order
of the models, or the path the checkpoint recorded). SIFID: Fréchet distance over the spatial positions of the
first-pooling-block features of InceptionV3 (weights from --inception FILE), else of the early stages of a CNN
encoder file (--sifid-encoder, e.g. the demo's EfficientNet-Lite0), else of a fixed random conv stack; both
substitutes are labelled and not comparable to published figures. Diversity: mean pairwise LPIPS between the
samples (weights from --lpips FILE), else mean pairwise pixel L1, labelled. SIFID is very sensitive to outliers, so
every image gets its median and interquartile range, not only the mean.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semantica_core.atomic import write_json_atomic
from training.options import add_device, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="single-image checkpoints (.safetensors)")
    parser.add_argument("--images", nargs="+", default=None,
                        help="training images, one per model in order (default: the path each checkpoint recorded)")
    parser.add_argument("--samples", type=int, default=16, help="samples per model (default 16)")
    parser.add_argument("--sampler", default="dpmpp_2m", help="sampler (default dpmpp_2m; ddpm = the paper's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: 50, or all 1000 DDPM timesteps for --sampler ddpm)")
    parser.add_argument("--seed", type=int, default=0, help="sample k of a model uses seed + k")
    parser.add_argument("--inception", default=None, help="InceptionV3 weights (.safetensors, torchvision layout)")
    parser.add_argument("--sifid-encoder", default=None,
                        help="CNN encoder file whose stride-4 features SIFID uses when there are no Inception weights")
    parser.add_argument("--lpips", default=None, help="LPIPS-Alex weights (.safetensors)")
    add_device(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="samples drawn at once")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def quartiles(values) -> dict:
    """mean, median, q25, q75 and iqr of a 1-D tensor (as floats)."""
    import torch

    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    q25, median, q75 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {"mean": float(values.mean()), "median": median, "q25": q25, "q75": q75, "iqr": q75 - q25}


def draw_samples(model, width, height, *, samples, sampler, steps, seed, batch_size):
    """`samples` samples of `model` at width x height, sample k from seed + k (so batching does not change them)."""
    import torch

    from semantica_core.single_image import sample_single_image

    chunks = []
    for start in range(0, samples, batch_size):
        n = min(batch_size, samples - start)
        chunks.append(sample_single_image(
            model, seed=seed + start, count=n, width=width, height=height, steps=steps, sampler=sampler
        ).cpu())
    return torch.cat(chunks)


def evaluate_model(model, real, *, samples, sampler, steps, seed, feature_net, distance, batch_size) -> dict:
    """SIFID per sample and pairwise diversity of `samples` samples of `model` against `real` [1,3,H,W] in [0, 1]."""
    height, width = real.shape[-2:]
    fakes = draw_samples(model, width, height, samples=samples, sampler=sampler, steps=steps, seed=seed,
                         batch_size=batch_size)
    return measure_samples(fakes, real, feature_net, distance)


def measure_samples(fakes, real, feature_net, distance) -> dict:
    """SIFID of each of `fakes` against `real` and their pairwise diversity."""
    from semantica_core.metrics.diversity import pairwise_distances
    from semantica_core.metrics.sifid import sifid

    sifids = sifid(feature_net, real, fakes)
    return {
        "sifid": quartiles(sifids),
        "sifid_per_sample": [float(v) for v in sifids],
        "diversity": quartiles(pairwise_distances(fakes, distance)),
        "samples": len(fakes),
        "size": [int(fakes.shape[-1]), int(fakes.shape[-2])],
    }


def run(args) -> int:
    import torch

    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.imageops import resize
    from semantica_core.metrics.diversity import PIXEL_L1_LABEL, load_lpips
    from semantica_core.metrics.sifid import sifid_feature_network
    from semantica_core.single_image import training_size
    from training.train_single import load_image

    if args.images is not None and len(args.images) != len(args.models):
        raise ValueError(f"--images needs one image per model: {len(args.models)} models, {len(args.images)} images")
    if args.samples < 2:
        raise ValueError("--samples must be at least 2 (diversity compares pairs)")
    device = resolve_device(args.device)
    feature_net = sifid_feature_network(args.inception, args.sifid_encoder).to(device)
    distance = load_lpips(args.lpips).to(device) if args.lpips else "l1"
    sifid_label = feature_net.label
    diversity_label = distance.label if args.lpips else PIXEL_L1_LABEL
    print(f"SIFID features: {sifid_label}")
    print(f"diversity: {diversity_label}")
    steps = args.steps if args.steps is not None else (None if args.sampler == "ddpm" else 50)

    results = []
    for index, model_path in enumerate(args.models):
        model = load_checkpoint(model_path, device=device)
        if model.kind != "single_image":
            raise ValueError(f"{model_path} is a '{model.kind}' model; eval single needs single-image checkpoints")
        image_path = args.images[index] if args.images else (model.training_info or {}).get("source_image")
        if not image_path or not Path(image_path).is_file():
            raise FileNotFoundError(
                f"training image of {model_path} not found ({image_path or 'not recorded'}); pass it with --images"
            )
        width, height = training_size(model)
        real = resize(load_image(image_path), width, height)
        result = evaluate_model(
            model, real, samples=args.samples, sampler=args.sampler, steps=steps, seed=args.seed,
            feature_net=feature_net, distance=distance, batch_size=args.batch_size,
        )
        result.update(model=str(model_path), image=str(image_path))
        results.append(result)
        s, d = result["sifid"], result["diversity"]
        print(
            f"{Path(model_path).name}: SIFID median {s['median']:.4f} (IQR {s['q25']:.4f}-{s['q75']:.4f}, "
            f"mean {s['mean']:.4f}); diversity median {d['median']:.4f} (IQR {d['q25']:.4f}-{d['q75']:.4f}, "
            f"mean {d['mean']:.4f}); {args.samples} samples at {width}x{height}"
        )
    summary = {
        "sifid_features": sifid_label,
        "sifid_comparable_to_published": bool(feature_net.comparable),
        "diversity_distance": diversity_label,
        "diversity_comparable_to_published": bool(args.lpips),
        "sampler": args.sampler,
        "steps": steps,
        "models": results,
    }
    if len(results) > 1:
        summary["over_images"] = {
            "sifid_median": quartiles([r["sifid"]["median"] for r in results]),
            "diversity_mean": quartiles([r["diversity"]["mean"] for r in results]),
        }
        o = summary["over_images"]
        print(f"over {len(results)} images: median of per-image SIFID medians {o['sifid_median']['median']:.4f} "
              f"(IQR {o['sifid_median']['iqr']:.4f}); median diversity {o['diversity_mean']['median']:.4f}")
    if args.json:
        write_json_atomic(args.json, summary, indent=2)
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    """`python -m training.eval_single ...` is `semantica eval single ...`."""
    from training import cli

    return cli.main(["eval", "single", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
