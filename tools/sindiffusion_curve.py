"""SinDiffusion quality per training minute: SIFID against training time, one recipe on one photo.

    python -m tools.sindiffusion_curve --photo coffee --recipe before --steps 4000 --every 500 --output DIR
    python -m tools.sindiffusion_curve --photo coffee --recipe cosine-2e-3 --steps 2400 --every 400 --output DIR

Trains `sindiffusion_tiny` on a scikit-image photo (or an image file), writes the EMA checkpoint at every `--every`
steps with the training seconds so far (saving excluded), then draws 16 samples of each checkpoint (dpmpp_2m, 50
steps, seeds 0-15) and measures their SIFID against the training image with one fixed feature network for every
point: the Inception first block when --inception is given, else the stride-4 features of the demo's ImageNet
EfficientNet-Lite0 (--sifid-encoder; learned, so structure counts, not only colour), labelled as a substitute.
--evaluate-only measures the checkpoints of a run that was stopped early, or of a finished one with another sampler:
--sampler ddpm --sampler-steps 250 writes DIR/curve-ddpm-250.json beside the dpmpp_2m figures.
DIR/curve.json holds every point; `--report A.json B.json ...` prints the table of several runs.

Recipes: `before` is the tiny preset as it was before (float32, constant lr 5e-4, EMA 0.9999); `default` is the
preset as it is now (`auto` precision and its recipe: a constant 2e-3 after the warm-up, the first 90 % of the steps
small, at U(0.55, 0.85) per axis); `small-0.45-0.75` is it with the smaller scales it had until 2026-12-08;
`full-size` is the default as it was until 2026-12-07 (a cosine to a tenth, every step at the photo's full size),
`progressive-cosine` that cosine with the first 56 % small (the default for a day), and `small-0.56` the
constant rate with the first 56 % small (the default for a few hours); `cosine-2e-3` is `full-size` spelled
out, as it was measured against `before` (100 warm-up steps, cosine from 2e-3 to a tenth over the run, EMA 0.999).
Twelve variations of `full-size` were measured against it on astronaut (README): `batch-4` (half the batch, so twice
the steps in the same time), `lr-4e-3` (twice the peak learning rate), `min-snr-5` (Min-SNR loss weighting, gamma 5),
`no-rescale` (every batch at the photo's own size), `rescale-0.6-1.4` (a wider random rescale than the paper's
0.75-1.25), `lognormal` and `lognormal-0.7-1.5` (log-normal training noise levels in place of uniform timesteps:
EDM's, and one with fewer rows at the pure-noise end), `base-24` and `base-40` (24 or 40 base channels instead of 32:
0.56x or 1.56x the FLOPs of a step, so more or fewer steps in the same time), `crop-0.7` (each batch row a random
crop of 0.7 of the rescaled photo's sides: half the pixels, so about twice the steps in the same time), `stratified`
(each batch's timesteps spread evenly over the range: less variance in the loss) and `t-50` (50 DDPM timesteps, as
SinFusion, in place of 1,000).

--extra-ema D [D ...] keeps further averages of the same run's weights beside the recipe's EMA, one per decay (0: the
raw weights), and writes and measures each one's checkpoints in DIR/ema-D: several averages from one training. The
EMA warm-up caps update n's decay at (1 + n) / (10 + n), so a decay D only differs from another, longer one after
(10 D - 1) / (1 - D) updates (0.99: 890; the preset's 0.999: 8,990). --extra-ema-warmup K [K ...] keeps further
averages that cap it at (1 + n) / (K + n) instead, with the recipe's decay, in DIR/ema-warmup-K: their centre lags
the run by about 1/K of its length where the recipe's lags by a tenth (K = 2: the plain mean of every step's weights).
--small-first MIN MAX N trains the first N steps on the photo rescaled by U(MIN, MAX) per axis in place of the
recipe's range (progressive size: cheaper steps first), the learning rate following the whole run's curve; it sets
the config's small_fraction to N / --steps and its small scales.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def tiny_diffusion(**schedule) -> dict:
    """The tiny preset's diffusion with these fields of its noise schedule changed."""
    from semantica_core.single_image_train import PRESETS, sindiffusion_diffusion

    diffusion = sindiffusion_diffusion(PRESETS["sindiffusion_tiny"]["prediction"]).to_dict()
    diffusion["schedule"].update(schedule)
    return diffusion


def lognormal_diffusion(mean: float, std: float) -> dict:
    """Log-normal training noise levels, ln sigma ~ N(mean, std^2), in place of uniform DDPM timesteps (which put
    43 % of the rows above sigma 5 and 15 % below 0.5). EDM's N(-1.2, 1.2^2) puts 1 % and 66 % there; N(0.7, 1.5^2)
    27 % and 18 %: fewer rows where the photo is all but gone, as many clean ones."""
    return tiny_diffusion(training_sigmas="lognormal", lognormal_mean=mean, lognormal_std=std)


def fewer_timesteps(timesteps: int) -> dict:
    """T DDPM timesteps in place of 1,000 (SinFusion trains T = 50, SinDDM 100 per scale), the linear betas scaled by
    1000 / T so the noise levels span the same range (sigma 0.045 to 359 for 50)."""
    scale = 1000 / timesteps
    return tiny_diffusion(timesteps=timesteps, beta_start=1e-4 * scale, beta_end=0.02 * scale)


def network_width(base_channels: int) -> dict:
    """The tiny preset's network with another width: the same depth and receptive field (45 px), the compute of a
    step about proportional to base_channels squared."""
    from semantica_core.single_image_train import PRESETS

    return {**PRESETS["sindiffusion_tiny"]["network"], "base_channels": base_channels}


DEMO_ENCODER = Path(__file__).resolve().parents[1] / "models" / "demo" / "encoders" / "efficientnet-lite0.safetensors"
# The variations were measured against the default as it was then: a cosine, every step at full size (`full-size`).
FULL_SIZE = dict(lr_decay="cosine", lr_final=0.1, small_fraction=0.0)
OLD_SMALL_SCALES = dict(small_scale_min=0.45, small_scale_max=0.75)  # progressive size's scales until 2026-12-08
RECIPES = {
    "before": dict(FULL_SIZE, precision="fp32", lr=5e-4, warmup_steps=0, lr_decay="constant", ema_decay=0.9999),
    "default": {},
    "full-size": FULL_SIZE,
    "small-0.45-0.75": dict(OLD_SMALL_SCALES),
    "progressive-cosine": dict(OLD_SMALL_SCALES, lr_decay="cosine", lr_final=0.1, small_fraction=0.56),
    "small-0.56": dict(OLD_SMALL_SCALES, small_fraction=0.56),
    "cosine-2e-3": dict(FULL_SIZE, lr=2e-3, warmup_steps=100, lr_decay="cosine", lr_final=0.1, ema_decay=0.999),
    **{name: dict(FULL_SIZE, **change) for name, change in {
        "batch-4": dict(batch_size=4),
        "min-snr-5": dict(min_snr_gamma=5.0),
        "lr-4e-3": dict(lr=4e-3),
        "no-rescale": dict(scale_min=1.0, scale_max=1.0),
        "rescale-0.6-1.4": dict(scale_min=0.6, scale_max=1.4),
        "lognormal": dict(diffusion=lognormal_diffusion(-1.2, 1.2)),
        "lognormal-0.7-1.5": dict(diffusion=lognormal_diffusion(0.7, 1.5)),
        "base-24": dict(network=network_width(24)),
        "base-40": dict(network=network_width(40)),
        "crop-0.7": dict(crop=0.7),
        "stratified": dict(diffusion=tiny_diffusion(training_sigmas="stratified_t")),
        "t-50": dict(diffusion=fewer_timesteps(50)),
    }.items()},
}


def photo(name: str):
    """A scikit-image photo by name, or an image file, as [1,3,H,W] in [0, 1]."""
    from training.train_single import load_image

    if Path(name).is_file():
        return load_image(name)
    import numpy as np
    import skimage.data
    import torch

    array = np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255


def train(args, out: Path) -> None:
    import torch

    from semantica_core.single_image_train import (
        PRESETS,
        SingleImageTrainConfig,
        init_train_state,
        save_single_image_checkpoint,
        train_single_image,
    )

    steps = args.steps or PRESETS["sindiffusion_tiny"]["steps"]
    recipe = dict(RECIPES[args.recipe])
    if args.small_first:
        recipe.update(small_scale_min=args.small_first[0], small_scale_max=args.small_first[1],
                      small_fraction=args.small_first[2] / steps)
    config = SingleImageTrainConfig.from_preset("sindiffusion_tiny", seed=args.seed, **recipe)
    state = init_train_state(photo(args.photo), config, "cpu")
    extra = {folder: make(state.network.named_parameters(), config.ema_decay)
             for folder, _, make in extra_averages(args, out)}
    averages = {out: state.ema, **extra}
    times, clock = {}, {"seconds": 0.0, "since": time.perf_counter()}

    def at_step(info):
        for average in extra.values():  # the recipe's own EMA is updated by the training loop
            average.update()
        if info["step"] % args.every and info["step"] != info["total"]:
            return
        clock["seconds"] += time.perf_counter() - clock["since"]
        name = f"step-{info['step']:06d}.safetensors"
        times[name] = clock["seconds"]
        for folder, average in averages.items():
            folder.mkdir(parents=True, exist_ok=True)
            state.ema = average  # the checkpoint's EMA weights are this average's
            save_single_image_checkpoint(folder / name, state, source_image=args.photo)
            (folder / "train_seconds.json").write_text(json.dumps(times, indent=1))
        state.ema = averages[out]
        print(f"step {info['step']}/{info['total']}: {clock['seconds']:.0f} s of training", flush=True)
        clock["since"] = time.perf_counter()

    with torch.inference_mode(False):
        train_single_image(None, steps=steps, callback=at_step, state=state)


def extra_averages(args, out: Path) -> list:
    """(folder, label, make) of each further average: make(named_parameters, recipe_decay) builds its EMA."""
    from semantica_core.ema import EMA

    class WarmupEMA(EMA):
        """The recipe's EMA with another warm-up: update n's decay capped at (1 + n) / (offset + n)."""

        def __init__(self, named_parameters, decay, offset):
            super().__init__(named_parameters, decay)
            self.offset = offset

        def decay_at(self, update):
            return min(self.decay, (1.0 + update) / (self.offset + update))

    averages = [(out / f"ema-{decay:g}", f"EMA {decay:g}" if decay else "raw weights",
                 lambda named, _, decay=decay: EMA(named, decay)) for decay in args.extra_ema]
    averages += [(out / f"ema-warmup-{k:g}", f"EMA warm-up (1 + n) / ({k:g} + n)",
                  lambda named, decay, k=k: WarmupEMA(named, decay, k)) for k in args.extra_ema_warmup]
    return averages


def checkpoints(out: Path) -> list[dict]:
    """The run's checkpoints in step order, with the training seconds the run recorded (a shared machine's wall
    clock: the README converts steps to minutes with a quiet machine's time per step)."""
    times_file = out / "train_seconds.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    return [{"step": int(path.stem.split("-")[1]), "train_seconds": times.get(path.name), "checkpoint": str(path)}
            for path in sorted(out.glob("step-*.safetensors"))]


DEFAULT_SAMPLER = ("dpmpp_2m", 50)


def sampler_suffix(sampler: str, steps: int) -> str:
    """"" for the curve's default sampler (the file names of every earlier curve), else "-NAME-STEPS"."""
    return "" if (sampler, steps) == DEFAULT_SAMPLER else f"-{sampler}-{steps}"


def evaluate(points: list[dict], image, samples: int, inception, sifid_encoder, out: Path, sampler: str,
             steps: int) -> None:
    """Each checkpoint's samples, measured with the chosen feature network and, beside it, the random-conv
    substitute (the figures of earlier curves); out/samples-STEP[-SAMPLER-STEPS].png shows the first eight."""
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.imageops import resize
    from semantica_core.metrics.sifid import sifid, sifid_feature_network
    from semantica_core.single_image import training_size
    from training.eval_single import draw_samples, measure_samples, quartiles

    feature_net = sifid_feature_network(inception, None if inception else sifid_encoder)
    substitute = sifid_feature_network()
    for point in points:
        model = load_checkpoint(point["checkpoint"])
        width, height = training_size(model)
        real = resize(image, width, height)
        fakes = draw_samples(model, width, height, samples=samples, sampler=sampler, steps=steps, seed=0,
                             batch_size=8)
        result = measure_samples(fakes, real, feature_net, "l1")
        point.update(sifid=result["sifid"], sifid_per_sample=result["sifid_per_sample"],
                     diversity_l1=result["diversity"]["mean"], sifid_features=feature_net.label,
                     sifid_substitute=quartiles(sifid(substitute, real, fakes)))
        grid = make_grid(torch.cat([real, fakes[:8]]).clamp(0, 1), nrow=3, padding=2, pad_value=1.0)
        Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy()).save(
            out / f"samples-{point['step']:06d}{sampler_suffix(sampler, steps)}.png")
        print(f"step {point['step']}: SIFID median {result['sifid']['median']:.4f} "
              f"(IQR {result['sifid']['q25']:.4f}-{result['sifid']['q75']:.4f}); random-conv substitute "
              f"{point['sifid_substitute']['median']:.4f}", flush=True)


def report(paths: list[str]) -> None:
    """One row per checkpoint of each run: photo, recipe, step, SIFID median and IQR, the substitute's median."""
    print("| photo | recipe | sampler | step | SIFID median | IQR | random-conv substitute median |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path in paths:
        run = json.loads(Path(path).read_text())
        sampler = f"{run.get('sampler', DEFAULT_SAMPLER[0])} {run.get('sampler_steps', DEFAULT_SAMPLER[1])}"
        for p in run["points"]:
            s, sub = p["sifid"], p.get("sifid_substitute", {}).get("median")
            print(f"| {run['photo']} | {run['recipe']} | {sampler} | {p['step']} | {s['median']:.3f} | "
                  f"{s['q25']:.3f}-{s['q75']:.3f} | {'' if sub is None else f'{sub:.3f}'} |")


def main(argv=None) -> int:
    from semantica_core.diffusion.samplers import SAMPLERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", help="a scikit-image photo (chelsea, coffee, astronaut, ...) or an image file")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    parser.add_argument("--steps", type=int, default=None, help="total steps (default: the preset's)")
    parser.add_argument("--every", type=int, default=500, help="a curve point every N steps")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default=DEFAULT_SAMPLER[0],
                        help="the sampler of the SIFID samples (another one writes curve-SAMPLER-STEPS.json)")
    parser.add_argument("--sampler-steps", type=int, default=DEFAULT_SAMPLER[1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inception", default=None, help="InceptionV3 weights (.safetensors) for real SIFID")
    parser.add_argument("--sifid-encoder", default=str(DEMO_ENCODER),
                        help="CNN encoder file for the SIFID features when --inception is not given")
    parser.add_argument("--extra-ema", type=float, nargs="+", default=[], metavar="DECAY",
                        help="further EMA decays of the same run to measure (0: the raw weights), each in DIR/ema-D")
    parser.add_argument("--extra-ema-warmup", type=float, nargs="+", default=[], metavar="K",
                        help="further averages with the warm-up (1 + n) / (K + n), K > 1, each in DIR/ema-warmup-K")
    parser.add_argument("--small-first", type=float, nargs=3, default=None, metavar=("MIN", "MAX", "STEPS"),
                        help="progressive size: the first STEPS steps rescale by U(MIN, MAX) per axis")
    parser.add_argument("--output", help="folder of the checkpoints and curve.json")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="measure the checkpoints already in --output (of a run stopped early) without training")
    parser.add_argument("--report", nargs="+", metavar="CURVE_JSON", help="print the table of finished runs")
    args = parser.parse_args(argv)
    if args.report:
        report(args.report)
        return 0
    if not args.photo or not args.output:
        parser.error("--photo and --output are needed to run a curve")
    if any(k <= 1 for k in args.extra_ema_warmup):
        parser.error("--extra-ema-warmup needs K > 1 ((1 + n) / (K + n) is a decay below 1)")
    if args.small_first and not (0 < args.small_first[0] <= args.small_first[1] and args.small_first[2] >= 1):
        parser.error("--small-first needs 0 < MIN <= MAX and STEPS >= 1")
    if args.sampler_steps < 1:
        parser.error("--sampler-steps needs at least 1 step")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if not args.evaluate_only:
        train(args, out)
    image = photo(args.photo)
    for folder, label in [(out, None)] + [(folder, label) for folder, label, _ in extra_averages(args, out)]:
        points = checkpoints(folder)
        evaluate(points, image, args.samples, args.inception, args.sifid_encoder, folder, args.sampler,
                 args.sampler_steps)
        recipe = args.recipe if label is None else f"{args.recipe}, {label}"
        run = {"photo": args.photo, "recipe": recipe, "recipe_overrides": RECIPES[args.recipe], "seed": args.seed,
               "small_first": args.small_first, "samples": args.samples, "sampler": args.sampler,
               "sampler_steps": args.sampler_steps, "points": points}
        written = folder / f"curve{sampler_suffix(args.sampler, args.sampler_steps)}.json"
        written.write_text(json.dumps(run, indent=2))
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
