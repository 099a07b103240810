"""The fast path against float32 NCHW, and the fraction of the machine each step uses.

Four workloads, each through the project's own code path (Denoiser.loss + backward + AdamW for training, the
Denoiser's guided forward for sampling), run twice from the same seed: once with precision "fp32" (float32 NCHW,
the reference) and once with the precision under test (default: what "auto" resolves to on the device; see
semantica_core.precision). The two alternate step by step in one process, so drift on a shared machine hits both.

  train single   sindiffusion_tiny, batch 8, 72x112 (the tiny preset's 112 px picture at scale 1): + EMA update
  train pairs    the tiny pair model, batch 32, 32 px, 49 x 1280 tokens: + gradient clipping
  sample single  sindiffusion_tiny, batch 8, 72x112, forward only
  sample pairs   the tiny pair model, batch 8, 32 px, guidance 3 (one forward of 16 rows)

Roofline: the FLOPs of one step (torch.utils.flop_counter.FlopCounterMode, counted on the float32 path: precision
does not change them) over its median time, divided by the peak this run measures for a 2048^3 matmul in the same
dtype on the same device. A fraction, not an MFU against a datasheet.

    python -m training.benchmarks.precision                    # CPU: auto vs fp32, all four
    python -m training.benchmarks.precision --precision bf16 --only train-single --repeats 20
    python -m training.benchmarks.precision --device cuda --json out/bench_precision.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from semantica_core.diffusion import Denoiser, DiffusionConfig, ScheduleConfig
from semantica_core.embeds import Embeds
from semantica_core.networks import PairConditionedUNet, PatchUNet
from semantica_core.precision import Precision, describe, resolve_precision
from semantica_core.presets import network_preset
from semantica_core.train_state import adamw

WORKLOADS = ("train-single", "train-pairs", "sample-single", "sample-pairs")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` n^3 matmuls in `dtype` on `device` (the roofline's ceiling)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    best = float("inf")
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if i:  # the first is a warm-up
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class Workload:
    """One step of one workload on its own network, optimizer and precision."""

    def __init__(self, name: str, precision: Precision, device: torch.device, scale: int = 1):
        self.name, self.device = name, device
        single = name.endswith("single")
        self.training = name.startswith("train")
        torch.manual_seed(0)
        if single:
            network = PatchUNet(network_preset("sindiffusion_tiny"))
            config = DiffusionConfig(ScheduleConfig(kind="vp_linear", timesteps=1000), prediction="v")
            batch, height, width = 8, 72 * scale, 112 * scale
            self.embeds = None
        else:
            cfg = network_preset("tiny", token_dim=1280, pooled_dim=1280)
            network = PairConditionedUNet(cfg)
            config = DiffusionConfig(ScheduleConfig(kind="vp_cosine"), prediction="v")
            batch = 32 if self.training else 8
            height = width = cfg.resolution * scale
            g = torch.Generator().manual_seed(1)
            self.embeds = Embeds(torch.randn(batch, 49, 1280, generator=g).to(device),
                                 torch.randn(batch, 1280, generator=g).to(device), "bench")
        self.network = network.to(device)
        self.denoiser = Denoiser(self.network, config, precision=precision)
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(batch, 3, height, width, generator=g).to(device)
        self.sigma = torch.full((batch,), 2.0, device=device)
        self.batch = batch
        self.generator = torch.Generator(device=device).manual_seed(3)
        if self.training:
            self.network.train()
            self.optimizer = adamw(self.network.parameters(), device, lr=1e-4)
            # the EMA stays float32 in the default layout, as in the trainers
            self.ema = [p.detach().clone() for p in self.network.parameters()]
        else:
            self.network.eval()

    def step(self) -> None:
        if self.training:
            loss = self.denoiser.loss(self.x, self.embeds, generator=self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.embeds is not None:
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), 1.0)
            self.optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.network.parameters()], 1e-3)
        else:
            with torch.no_grad():
                self.denoiser(self.x, self.sigma, embeds=self.embeds, guidance_scale=3.0)

    def timed(self) -> float:
        _sync(self.device)
        start = time.perf_counter()
        self.step()
        _sync(self.device)
        return time.perf_counter() - start

    def flops(self) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            self.step()
        return counter.get_total_flops()


def bench_workload(name: str, fast: Precision, device: torch.device, repeats: int, warmup: int,
                   peaks: dict, scale: int = 1) -> dict:
    runs = {key: Workload(name, precision, device, scale)
            for key, precision in (("fp32", Precision(device.type)), ("fast", fast))}
    flops = runs["fp32"].flops()
    for _ in range(warmup):
        for run in runs.values():
            run.step()
    times = {key: [] for key in runs}
    for i in range(repeats):
        for key in list(runs) if i % 2 == 0 else list(runs)[::-1]:
            times[key].append(runs[key].timed())
    result = {"workload": name, "batch": runs["fp32"].batch, "size": list(runs["fp32"].x.shape[-2:]),
              "gflop_per_step": flops / 1e9, "repeats": repeats, "fast_path": describe(fast)}
    for key, precision in (("fp32", Precision(device.type)), ("fast", fast)):
        median, best = statistics.median(times[key]), min(times[key])
        peak = peaks[precision.name]
        result[key] = {"median_s": median, "min_s": best, "images_per_s": runs[key].batch / median,
                       "gflops": flops / median / 1e9, "roofline": flops / median / peak}
    result["speedup_median"] = result["fp32"]["median_s"] / result["fast"]["median_s"]
    result["speedup_min"] = result["fp32"]["min_s"] / result["fast"]["min_s"]
    return result


def format_result(r: dict) -> str:
    f, s = r["fp32"], r["fast"]
    return (f"{r['workload']:<14} fp32 {f['median_s'] * 1e3:8.1f} ms ({f['roofline']:6.1%} of fp32 peak)   "
            f"{r['fast_path']}: {s['median_s'] * 1e3:8.1f} ms ({s['roofline']:6.1%} of its peak)   "
            f"speed-up {r['speedup_median']:.2f}x median, {r['speedup_min']:.2f}x best; "
            f"{r['gflop_per_step']:.2f} GFLOP/step")


def run(device: str = "cpu", precision: str = "auto", only=None, repeats: int = 10, warmup: int = 2,
        scale: int = 1, threads=None, peak_size: int = 2048, out=print) -> dict:
    """Each workload's fp32 and fast-path figures: {"peak_gflops": {"fp32", "bf16"}, "workloads": [{"workload",
    "fp32": {...}, "fast": {...}, "speedup_median", ...}], ...}; `out` gets one line per workload as it ends."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    fast = resolve_precision(precision, device)
    peaks = {"fp32": matmul_peak(device, torch.float32, peak_size),
             "bf16": matmul_peak(device, torch.bfloat16, peak_size)}
    out(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; fast path: "
        f"{describe(fast)} (precision={precision}); matmul peak fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; {repeats} interleaved repeats")
    results = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "precision": precision, "fast": describe(fast),
               "peak_gflops": {k: v / 1e9 for k, v in peaks.items()}, "workloads": []}
    for name in only or WORKLOADS:
        if name not in WORKLOADS:
            raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        r = bench_workload(name, fast, device, repeats, warmup, peaks, scale)
        r["size"] = [int(v) for v in r["size"]]
        results["workloads"].append(r)
        out(format_result(r))
    return results


def loss_curve(image: torch.Tensor, steps: int, chunk: int = 25, device: str = "cpu", precision: str = "auto",
               preset: str = "sindiffusion_tiny", reference_seeds=(), out=print) -> dict:
    """`train_single_image` twice from seed 0, float32 NCHW and `precision`, alternating `chunk` steps at a time:
    the loss of every step of both (same scales, timesteps and noise) and the seconds each spent training. Then
    float32 from each of `reference_seeds`: what another training seed changes is the noise the two are judged by."""
    from semantica_core.single_image_train import SingleImageTrainConfig, init_train_state, train_single_image

    runs = [("fp32", "fp32", 0), (precision, precision, 0)]
    runs += [(f"fp32 seed {seed}", "fp32", seed) for seed in reference_seeds]
    states, losses, seconds = {}, {}, {}
    for name, path, seed in runs:
        config = SingleImageTrainConfig.from_preset(preset, precision=path, seed=seed)
        states[name] = init_train_state(image, config, device)
        losses[name], seconds[name] = [], 0.0

    def train_to(name: str, total: int) -> None:
        start = time.perf_counter()
        train_single_image(None, steps=total, state=states[name],
                           callback=lambda info: losses[name].append(float(info["loss"])))
        seconds[name] += time.perf_counter() - start

    compared = [name for name, _, _ in runs[:2]]
    for end in range(chunk, steps + chunk, chunk):
        for name in compared if (end // chunk) % 2 else compared[::-1]:
            train_to(name, min(end, steps))
    for name, _, _ in runs[2:]:
        train_to(name, steps)
    result = {"steps": steps, "preset": preset, "losses": losses, "seconds": seconds,
              "train_size": list(states["fp32"].image.shape[-2:])}
    window = max(1, steps // 10)
    for name in states:
        tail = losses[name][-window:]
        out(f"{name:>10}: mean loss of the last {window} steps {sum(tail) / len(tail):.4f}; "
            f"{seconds[name] / steps * 1000 / 60:.2f} min per 1,000 steps")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", help="the path to compare with fp32: auto or bf16")
    parser.add_argument("--only", action="append", choices=WORKLOADS)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--scale", type=int, default=1, help="multiply the image sizes (GPU: 4 or 8)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--curve", type=int, default=0, metavar="STEPS",
                        help="instead: train sindiffusion_tiny on --image for STEPS steps in fp32 and the fast path")
    parser.add_argument("--image", default=None, help="the picture of --curve (default: skimage's chelsea)")
    parser.add_argument("--reference-seeds", type=int, nargs="*", default=[], metavar="SEED",
                        help="with --curve: float32 runs from these training seeds too (the seed-to-seed noise)")
    args = parser.parse_args(argv)
    if args.curve:
        if args.image:
            from semantica_core.image_files import load_image_file

            image = load_image_file(args.image)[None]
        else:
            import skimage.data

            image = torch.from_numpy(skimage.data.chelsea().copy()).permute(2, 0, 1)[None].float() / 255
        results = loss_curve(image, args.curve, device=args.device, precision=args.precision,
                             reference_seeds=args.reference_seeds)
    else:
        results = run(args.device, args.precision, args.only, args.repeats, args.warmup, args.scale, args.threads)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
