"""SinDiffusion: how few model evaluations a fast sampler needs to match the paper's 1000-step DDPM, and how long
training takes per 1,000 steps.

1. Sampler: a single-image model (--model FILE, or one trained here: tiny preset on skimage's chelsea) samples with
   the 1000-step DDPM (the reference) and with a fast sampler at increasing step counts. Each set is summarised by
   the median SIFID of its samples against the training image (substitute features unless --inception is given)
   and by the Fréchet distance (FD) of its pooled features to the DDPM set's. A setting "matches" DDPM-1000 when its
   median SIFID is within --tolerance of the DDPM's (or better) and its FD to the DDPM set is at most the FD
   between two DDPM sets of different seeds (the noise floor) times (1 + tolerance). An ODE sampler converges to
   the probability-flow ODE's distribution, which for an imperfect model is not exactly DDPM's: so each sampler
   also reports where it "converges", the first step count whose FD is within the tolerance of its FD at the
   largest step count. Reported: model evaluations and the ratio 1000 / evaluations for both.
2. Training: seconds per training step of each preset at its default size and batch, measured over --time-steps
   steps after 3 warm-up steps and extrapolated to 1,000 steps (the extrapolation is stated). On the CPU always; on
   CUDA when present; at precision auto (bf16 autocast + channels-last where the device has native bf16).

    python -m training.benchmarks.single                                # CPU; CUDA too when present
    python -m training.benchmarks.single --model out/cat.safetensors --image cat.png --samples 16
    python -m training.benchmarks.single --skip-sampler --time-steps 100
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from semantica_core.checkpoint import load_checkpoint
from semantica_core.metrics.frechet import frechet_distance_features
from semantica_core.metrics.sifid import sifid, sifid_feature_network, spatial_features
from semantica_core.precision import describe, resolve_precision
from semantica_core.single_image import sample_single_image
from semantica_core.single_image_train import (
    PRESETS,
    SingleImageTrainConfig,
    init_train_state,
    save_single_image_checkpoint,
    train_single_image,
)

NFE_PER_STEP = {"heun": 2}  # model evaluations per step (Heun: 2, but 1 for its last step to 0)


def chelsea() -> torch.Tensor:
    import skimage.data

    return torch.from_numpy(skimage.data.chelsea().copy()).permute(2, 0, 1)[None].float() / 255


def model_evaluations(sampler: str, steps: int) -> int:
    return steps * NFE_PER_STEP.get(sampler, 1) - (NFE_PER_STEP.get(sampler, 1) - 1)


def sample_set(model, seed, count, steps, sampler, width, height, batch):
    chunks = []
    for start in range(0, count, batch):
        chunks.append(sample_single_image(model, seed=seed + start, count=min(batch, count - start), width=width,
                                          height=height, steps=steps, sampler=sampler))
    return torch.cat(chunks).cpu()


def pooled_features(feature_net, images):
    return torch.cat(spatial_features(feature_net, images))


def bench_sampler(model, real, feature_net, samples: int = 12, batch: int = 12,
                  samplers=("dpmpp_2m", "euler_ancestral"), step_counts=(5, 10, 15, 20, 30, 50, 100),
                  tolerance: float = 0.1) -> dict:
    """The DDPM-1000 reference, its noise floor, and each sampler at each step count against it (see the module
    docstring): {"rows": [...], "match": fewest evaluations that match or None, "converged": {sampler: ...}}."""
    height, width = real.shape[-2:]
    t0 = time.perf_counter()
    reference = sample_set(model, 0, samples, None, "ddpm", width, height, batch)
    ddpm_seconds = time.perf_counter() - t0
    second = sample_set(model, 10_000, samples, None, "ddpm", width, height, batch)
    ref_features = pooled_features(feature_net, reference)
    floor = float(frechet_distance_features(ref_features, pooled_features(feature_net, second)))
    ref_sifid = float(sifid(feature_net, real, reference).median())
    rows = [{"sampler": "ddpm", "steps": 1000, "evaluations": 1000, "sifid_median": ref_sifid,
             "fd_to_ddpm": floor, "seconds": ddpm_seconds}]
    print(f"ddpm 1000 steps: median SIFID {ref_sifid:.4f}; FD between two DDPM sets (noise floor) {floor:.4f}; "
          f"{ddpm_seconds:.1f} s for {samples} samples")
    match, converged = None, {}
    for sampler in samplers:
        for steps in sorted(step_counts):
            t0 = time.perf_counter()
            images = sample_set(model, 20_000, samples, steps, sampler, width, height, batch)
            seconds = time.perf_counter() - t0
            median = float(sifid(feature_net, real, images).median())
            fd = float(frechet_distance_features(ref_features, pooled_features(feature_net, images)))
            nfe = model_evaluations(sampler, steps)
            ok = median <= ref_sifid * (1 + tolerance) and fd <= floor * (1 + tolerance)
            rows.append({"sampler": sampler, "steps": steps, "evaluations": nfe, "sifid_median": median,
                         "fd_to_ddpm": fd, "seconds": seconds, "matches": ok})
            print(f"{sampler:>15} {steps:4d} steps ({nfe:4d} evaluations): median SIFID {median:.4f}, "
                  f"FD to DDPM {fd:.4f}, {seconds:.1f} s{'  <- matches' if ok else ''}")
            if ok and (match is None or nfe < match["evaluations"]):
                match = {"sampler": sampler, "steps": steps, "evaluations": nfe, "ratio": 1000 / nfe}
        own = [r for r in rows if r["sampler"] == sampler]
        final = own[-1]["fd_to_ddpm"]
        first = next(r for r in own if r["fd_to_ddpm"] <= final * (1 + tolerance))
        converged[sampler] = {"steps": first["steps"], "evaluations": first["evaluations"],
                              "ratio": 1000 / first["evaluations"], "fd_to_ddpm": first["fd_to_ddpm"],
                              "fd_over_floor": first["fd_to_ddpm"] / floor, "sifid_median": first["sifid_median"]}
        c = converged[sampler]
        print(f"{sampler} converges at {c['evaluations']} evaluations ({c['ratio']:.0f}x fewer than DDPM-1000): "
              f"FD to DDPM {c['fd_to_ddpm']:.4f} = {c['fd_over_floor']:.2f}x the DDPM-vs-DDPM floor, median SIFID "
              f"{c['sifid_median']:.4f} (DDPM {ref_sifid:.4f})")
    if match:
        print(f"fewest evaluations matching DDPM-1000: {match['sampler']} with {match['evaluations']} "
              f"({match['ratio']:.0f}x fewer)")
    else:
        print("no fast setting matched DDPM-1000 within the tolerance")
    return {"rows": rows, "match": match, "converged": converged, "tolerance": tolerance,
            "features": feature_net.label,
            "samples": samples, "size": [int(width), int(height)]}


def bench_training(preset: str, device: torch.device, steps: int) -> dict:
    config = SingleImageTrainConfig.from_preset(preset)
    state = init_train_state(chelsea(), config, device)
    train_single_image(None, steps=3, state=state)  # warm-up: allocator, kernels, oneDNN primitives
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_single_image(None, steps=3 + steps, state=state)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / steps
    height, width = state.image.shape[-2:]
    precision = describe(resolve_precision(config.precision, device))
    result = {"preset": preset, "device": str(device), "measured_steps": steps, "seconds_per_step": per_step,
              "seconds_per_1000_steps": per_step * 1000, "extrapolated": True, "batch": config.batch_size,
              "size": [int(width), int(height)], "precision": precision,
              "paper_50k_hours": per_step * PRESETS[preset]["steps"] / 3600}
    print(f"train {preset:>17} on {device} ({width}x{height}, batch {config.batch_size}, {precision}): "
          f"{per_step:.3f} s/step measured over {steps} steps -> "
          f"{per_step * 1000 / 60:.1f} min per 1,000 steps (extrapolated); its default "
          f"{PRESETS[preset]['steps']} steps: {result['paper_50k_hours']:.2f} h")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="single-image checkpoint (default: train the tiny preset here)")
    parser.add_argument("--image", default=None, help="its training image (default: the checkpoint's, or chelsea)")
    parser.add_argument("--train-steps", type=int, default=2000, help="steps of the model trained here")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--samplers", nargs="+", default=["dpmpp_2m", "euler_ancestral"])
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 15, 20, 30, 50, 100])
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--inception", default=None, help="InceptionV3 weights for real SIFID features")
    parser.add_argument("--time-steps", type=int, default=50, help="training steps timed per preset and device")
    parser.add_argument("--skip-sampler", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--out", default="out/bench_single.json")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")

    results: dict = {}
    if not args.skip_sampler:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.model:
            model = load_checkpoint(args.model, device=device)
        else:
            path = Path(args.out).with_name(f"bench_single_tiny_{args.train_steps}.safetensors")
            if not path.is_file():
                config = SingleImageTrainConfig.from_preset("sindiffusion_tiny", max_side=64, lr=1e-3)
                t0 = time.perf_counter()
                state = train_single_image(chelsea(), config, args.train_steps, device=device)
                print(f"trained the tiny preset on chelsea at 64 px for {args.train_steps} steps in "
                      f"{time.perf_counter() - t0:.0f} s")
                save_single_image_checkpoint(path, state, source_image="skimage.data.chelsea")
            model = load_checkpoint(path, device=device)
        from semantica_core.imageops import resize
        from semantica_core.single_image import training_size

        width, height = training_size(model)
        if args.image:
            from semantica_core.image_files import load_image_file

            source = load_image_file(args.image)[None]
        else:
            source = chelsea()
        real = resize(source, width, height)
        feature_net = sifid_feature_network(args.inception).to(device)
        results["sampler"] = bench_sampler(model, real, feature_net, args.samples, args.batch, args.samplers,
                                           args.steps, args.tolerance)
    if not args.skip_training:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        results["training"] = [
            bench_training(preset, device, args.time_steps if device.type == "cpu" else max(args.time_steps, 100))
            for device in devices for preset in ("sindiffusion_tiny", "sindiffusion")
        ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
