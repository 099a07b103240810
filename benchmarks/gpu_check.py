"""The GPU check: one run, one table of what a lent GPU does with the project (about 6 minutes on one H100/H200).

  unet       training images/s of PairConditionedUNet against diffusers' UNet2DConditionModel of matched size
             (training/benchmarks/unet.py) for base64 and base256, bf16 autocast + channels-last, with and without
             torch.compile, and the fraction of the measured bf16 matmul peak each uses
  single     SinDiffusion training steps/s: the `sindiffusion` preset on a 250 px picture (precision auto)
  sampling   images/s of the Variations pipeline (`sample_variations`, dpmpp_2m, guidance 3) at 64 and 256 px
             (base64, base256; random weights: the cost of sampling does not depend on them)
  train      a short `semantica train pairs` run on generated pages (a colour and shape theme per page, nothing is
             downloaded) with the shipped EfficientNet-Lite0 encoder; reports whether its loss falls

    bash benchmarks/gpu_check.sh                  # on the GPU machine
    python -m benchmarks.gpu_check --quick        # the same parts on the CPU at tiny sizes (tests/test_gpu_check.py)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from training.benchmarks import unet
from training.benchmarks.precision import matmul_peak

REPO_ROOT = Path(__file__).resolve().parents[1]
ENCODER = REPO_ROOT / "models" / "demo" / "encoders" / "efficientnet-lite0.safetensors"

# Sizes of the full check (GPU) and of --quick (CPU, tests): the parts are the same code at other sizes.
FULL = {
    "unet": [("base64", 64, 20), ("base256", 8, 10)],  # (preset, batch, timed steps)
    "single": ("sindiffusion", 250, 30),  # (preset, long side, timed steps)
    "sampling": [("base64", 16, 20), ("base256", 4, 20)],  # (preset, images, sampler steps)
    "train": ("base64", 32, 600, 48),  # (preset, batch, steps, pages)
}
QUICK = {
    "unet": [("tiny", 2, 1)],
    "single": ("sindiffusion_tiny", 24, 2),
    "sampling": [("tiny", 2, 2)],
    "train": ("tiny", 4, 30, 6),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_unet(device: torch.device, sizes, peak: float, compile_modes) -> list[dict]:
    rows = []
    for preset, batch, repeats in sizes:
        for compiled in compile_modes:
            what = f"train {preset} bf16{' compiled' if compiled else ''}, batch {batch}"
            try:
                r = unet.train_throughput(preset, batch, str(device), dtype="bf16", compile=compiled,
                                          channels_last=True, repeats=repeats, warmup=2 if compiled else 1)
            except Exception as error:  # noqa: BLE001  (a failed compile is a row of the table, not the end)
                rows.append({"what": what, "value": "failed", "unit": "", "reference": "",
                             "notes": f"{type(error).__name__}: {error}"[:100]})
                continue
            ours, theirs = r["ours"], r["diffusers"]
            rows.append({
                "what": what, "value": ours["images_per_s"], "unit": "images/s", "reference": theirs["images_per_s"],
                "notes": f"diffusers; ratio {ours['images_per_s'] / theirs['images_per_s']:.2f}; of bf16 peak: ours "
                         f"{ours['gflop_per_step'] * 1e9 / ours['median_s'] / peak:.1%}, diffusers "
                         f"{theirs['gflop_per_step'] * 1e9 / theirs['median_s'] / peak:.1%}",
            })
    return rows


def check_single(device: torch.device, size) -> list[dict]:
    from semantica_core.precision import describe, resolve_precision
    from semantica_core.single_image_train import SingleImageTrainConfig, init_train_state, train_single_image

    preset, side, steps = size
    config = SingleImageTrainConfig.from_preset(preset, max_side=side)
    g = torch.Generator().manual_seed(0)
    picture = torch.rand(1, 3, round(side * 0.75), side, generator=g)
    state = init_train_state(picture, config, device)
    train_single_image(None, steps=3, state=state)  # warm-up
    _sync(device)
    start = time.perf_counter()
    train_single_image(None, steps=3 + steps, state=state)
    _sync(device)
    rate = steps / (time.perf_counter() - start)
    height, width = state.image.shape[-2:]
    return [{"what": f"train single {preset}, {width}x{height}, batch {config.batch_size}", "value": rate,
             "unit": "steps/s", "reference": "", "notes": f"{describe(resolve_precision(None, device))}; "
             f"{1000 / rate / 60:.1f} min per 1,000 steps"}]


def variations_model(preset: str, device: torch.device):
    from semantica_core.checkpoint import SemanticaModel
    from semantica_core.diffusion import Denoiser, DiffusionConfig, ScheduleConfig
    from semantica_core.networks import PairConditionedUNet
    from semantica_core.presets import network_preset

    cfg = network_preset(preset, token_dim=1280, pooled_dim=1280)
    torch.manual_seed(0)
    network = PairConditionedUNet(cfg).to(device).eval().requires_grad_(False)
    diffusion = DiffusionConfig(ScheduleConfig(kind="vp_cosine"), prediction="v")
    info = {"encoder_id": "gpu-check", "token_dim": 1280, "pooled_dim": 1280, "num_tokens": 49}
    return SemanticaModel(
        network=network, denoiser=Denoiser(network, diffusion), kind="pair_conditioned",
        network_config=cfg.to_dict(), diffusion_config=diffusion.to_dict(), encoder_info=info,
        resolution=cfg.resolution, channels=cfg.out_channels, path=f"random {preset}", weights="raw",
    )


def check_sampling(device: torch.device, sizes) -> list[dict]:
    from semantica_core.embeds import Embeds
    from semantica_core.pipeline import sample_variations
    from semantica_core.precision import describe

    rows = []
    for preset, count, steps in sizes:
        model = variations_model(preset, device)
        g = torch.Generator().manual_seed(1)
        embeds = Embeds(torch.randn(1, 49, 1280, generator=g), torch.randn(1, 1280, generator=g), "gpu-check")
        sample_variations(model, embeds, seed=0, count=count, steps=2)  # warm-up
        _sync(device)
        start = time.perf_counter()
        sample_variations(model, embeds, seed=0, count=count, steps=steps)
        _sync(device)
        seconds = time.perf_counter() - start
        rows.append({"what": f"sample variations {preset}, {model.resolution} px, {count} images", "value":
                     count / seconds, "unit": "images/s", "reference": "", "notes":
                     f"{steps} dpmpp_2m steps, guidance 3; {describe(model.denoiser.resolved_precision(device))}"})
    return rows


def write_pages(root: Path, pages: int, per_page: int = 4, size: int = 96, seed: int = 0) -> Path:
    """Generated pages: each page one hue and one shape, its images that shape at other places, sizes and
    backgrounds; pairs of a page are related, pages differ."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for p in range(pages):
        hue = rng.uniform(0, 255, 3)
        shape = p % 3
        folder = root / f"page{p:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_page):
            background = tuple(int(v) for v in rng.uniform(0, 80, 3) + (255 - hue) * 0.3)
            image = Image.new("RGB", (size, size), background)
            draw = ImageDraw.Draw(image)
            for _ in range(int(rng.integers(1, 4))):
                r = rng.uniform(0.1, 0.3) * size
                cx, cy = rng.uniform(r, size - r, 2)
                box = [cx - r, cy - r, cx + r, cy + r]
                colour = tuple(int(v) for v in np.clip(hue + rng.normal(0, 20, 3), 0, 255))
                [draw.ellipse, draw.rectangle, lambda b, fill: draw.polygon(
                    [(b[0], b[3]), ((b[0] + b[2]) / 2, b[1]), (b[2], b[3])], fill=fill)][shape](box, fill=colour)
            image.save(folder / f"{i}.png")
    return root


def check_train(device: torch.device, size, work: Path) -> list[dict]:
    preset, batch, steps, pages = size
    data = write_pages(work / "pages", pages)
    out = work / "train"
    command = [sys.executable, "-m", "training.cli", "train", "pairs", "--preset", preset, "--data", str(data),
               "--encoder", str(ENCODER), "--max-steps", str(steps), "--batch-size", str(batch),
               "--output", str(out), "--device", device.type, "--num-workers", "0" if device.type == "cpu" else "4",
               "--set", "train.log_every=1", "--set", "sample.every=0", "--set", "sample.num_conditions=0",
               "--set", f"train.checkpoint_every={steps}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    what = f"train pairs {preset}, batch {batch}, {steps} steps on {pages} generated pages"
    if done.returncode:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        return [{"what": what, "value": "failed", "unit": "", "reference": "", "notes": tail[0][:100]}]
    losses = tensorboard_losses(out / "tensorboard")
    tenth = max(1, len(losses) // 10)
    first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
    return [{"what": what, "value": last, "unit": "loss (last tenth)", "reference": first,
             "notes": f"first tenth; {'falls' if last < first else 'DOES NOT FALL'}; {seconds:.0f} s, "
                      f"{steps * batch / seconds:.1f} images/s with start-up"}]


def tensorboard_losses(logdir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return [e.value for e in events.Scalars("train/loss")]


def format_table(rows: list[dict]) -> str:
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    header = ("measurement", "value", "unit", "reference", "notes")
    table = [header] + [tuple(cell(r[k]) for k in ("what", "value", "unit", "reference", "notes")) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run of every part)")
    parser.add_argument("--only", action="append", choices=("unet", "single", "sampling", "train"))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = matmul_peak(device, torch.bfloat16)
    started = time.perf_counter()
    rows: list[dict] = []
    parts = args.only or ["unet", "single", "sampling", "train"]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        for part in parts:
            print(f"[gpu-check] {part} ...", file=sys.stderr, flush=True)
            if part == "unet":
                rows += check_unet(device, sizes["unet"], peak, (False,) if args.quick else (False, True))
            elif part == "single":
                rows += check_single(device, sizes["single"])
            elif part == "sampling":
                rows += check_sampling(device, sizes["sampling"])
            elif part == "train":
                rows += check_train(device, sizes["train"], work)
    print(f"gpu check {time.strftime('%Y-%m-%d')}: {name}, torch {torch.__version__}, bf16 matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s (measured), {time.perf_counter() - started:.0f} s")
    print(format_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": name, "peak_bf16_flops": peak, "rows": rows}, indent=2))
    failed = [r for r in rows if r["value"] == "failed" or "DOES NOT FALL" in r["notes"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
