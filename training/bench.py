"""`semantica bench`: the pack's performance claims, measured side by side in one run, printed as one table.

  precision  the fast path (precision auto: bf16 autocast + channels-last where the device has native bf16)
             against float32 NCHW in the same run, for training and sampling of both networks, with the roofline
             fraction of each (FLOPs of the step over the peak this run measures for a large matmul in the same
             dtype): benchmarks/bench_precision.py.
  unet       training throughput (forward, backward, AdamW step) of PairConditionedUNet against diffusers'
             UNet2DConditionModel of matched size: benchmarks/bench_unet.py, run as it is, once in float32 NCHW
             (the same-mode ratio) and once with bf16 autocast + channels-last; the ratio of each side's faster
             mode beside it; and sampling throughput (forward only, no grad) of the same two networks in both modes,
             built with bench_unet.diffusers_twin.
  node       time per variation through the ComfyUI node on a real server against a direct semantica_core call:
             benchmarks/bench_node_overhead.py, run as it is.
  samplers   network evaluations each sampler needs to reach the quality of 1000-step DDPM on the embedded MNIST
             demo model (models/demo/mnist-pairs.safetensors): quality = Fréchet distance to held-out digits in the
             demo classifier's 64-d features, the same conditions and seeds for every sampler.
The default run is short (a few minutes on a CPU); the benchmark scripts take larger settings on their own.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "benchmarks"
PARTS = ("precision", "unet", "node", "samplers")
MODES = {"fp32": [], "bf16": ["--dtype", "bf16", "--channels-last"]}  # bench_unet.py flags of each mode


def _run_script(script: str, args: list[str], timeout: float) -> tuple[int, str]:
    """Runs benchmarks/<script> with this interpreter; (exit code, stdout + stderr)."""
    command = [sys.executable, str(BENCH_DIR / script), *args]
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
    except subprocess.TimeoutExpired as expired:
        return 124, f"{script} ran past {timeout:.0f}s\n{expired.stdout or ''}"
    return done.returncode, done.stdout + done.stderr


def bench_unet_training(preset: str, batch: int, repeats: int, device: str, timeout: float) -> list[tuple]:
    """bench_unet.py in each mode, then the ratio of each side at its faster mode."""
    table, rates = [], {}
    for mode, flags in MODES.items():
        code, out = _run_script("bench_unet.py", ["--device", device, "--preset", preset, "--batch", str(batch),
                                                  "--repeats", str(repeats), "--warmup", "2", *flags], timeout)
        rows = {}
        for name in ("ours", "diffusers"):
            match = re.search(rf"^{name}\s+([\d.]+)\s+[\d.]+\s+([\d.]+)", out, re.M)
            if match:
                rows[name] = float(match.group(2))
        if code != 0 or len(rows) != 2:
            tail = out.strip().splitlines()[-1] if out.strip() else ""
            table.append((f"training throughput, {mode} (images/s)", "failed", "", tail))
            continue
        rates[mode] = rows
        params = re.search(r"parameters: ours ([\d.]+)M, diffusers ([\d.]+)M", out)
        note = f"{preset}, batch {batch}, fwd+bwd+AdamW; params {params.group(1)}M vs {params.group(2)}M" if params else preset
        table.append((f"training throughput, {mode} (images/s)", f"{rows['ours']:.1f}", f"{rows['diffusers']:.1f}",
                      f"ratio {rows['ours'] / rows['diffusers']:.2f}; {note}"))
    return table + best_mode_row("training", rates)


def best_mode_row(what: str, rates: dict) -> list[tuple]:
    """One row: each side at the mode that is fastest for it in this run (rates: mode -> {"ours", "diffusers"})."""
    if len(rates) < 2:
        return []
    best = {name: max(rates, key=lambda mode: rates[mode][name]) for name in ("ours", "diffusers")}
    ours, theirs = rates[best["ours"]]["ours"], rates[best["diffusers"]]["diffusers"]
    return [(f"{what}, each at its fastest mode", f"{ours:.1f}", f"{theirs:.1f}",
             f"ratio {ours / theirs:.2f}; ours {best['ours']}, diffusers {best['diffusers']}")]


def bench_unet_sampling(preset: str, batch: int, repeats: int, device: str) -> list[tuple]:
    """Forward-only throughput of both networks (what a sampler step costs) in each mode, all interleaved."""
    import torch

    sys.path.insert(0, str(BENCH_DIR))
    from bench_unet import diffusers_twin  # noqa: E402  (the matched-size diffusers network, not copied)

    from semantica_core.networks import PairConditionedUNet
    from semantica_core.presets import network_preset

    cfg = network_preset(preset, token_dim=1280, pooled_dim=1280)
    torch.manual_seed(0)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.resolution, cfg.resolution, generator=g).to(dev)
    c_noise = (torch.rand(batch, generator=g) * 999).to(dev)
    tokens = torch.randn(batch, 49, 1280, generator=g).to(dev)
    pooled = torch.randn(batch, 1280, generator=g).to(dev)
    calls = {}
    for mode in MODES:
        fast = mode == "bf16"
        layout = torch.channels_last if fast else torch.contiguous_format
        ours = PairConditionedUNet(cfg).to(dev, memory_format=layout).eval()
        theirs = diffusers_twin(cfg).to(dev, memory_format=layout).eval()
        xm = x.contiguous(memory_format=layout)

        def run(f, fast=fast):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=fast):
                return f()

        calls[(mode, "ours")] = lambda ours=ours, xm=xm, run=run: run(lambda: ours(xm, c_noise, tokens, pooled))
        calls[(mode, "diffusers")] = lambda theirs=theirs, xm=xm, run=run: run(
            lambda: theirs(xm, c_noise, encoder_hidden_states=tokens, class_labels=pooled).sample)
    times = {key: [] for key in calls}
    with torch.no_grad():
        for key in calls:
            calls[key]()  # warm-up
        for i in range(repeats):
            for key in (list(calls) if i % 2 == 0 else list(calls)[::-1]):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                start = time.perf_counter()
                calls[key]()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times[key].append(time.perf_counter() - start)
    rates = {mode: {name: batch / statistics.median(times[(mode, name)]) for name in ("ours", "diffusers")}
             for mode in MODES}
    rows = [(f"sampling throughput, {mode} (images x steps/s)", f"{r['ours']:.1f}", f"{r['diffusers']:.1f}",
             f"ratio {r['ours'] / r['diffusers']:.2f}; {preset}, batch {batch}, forward only")
            for mode, r in rates.items()]
    return rows + best_mode_row("sampling", rates)


def bench_precision(device: str, repeats: int) -> list[tuple]:
    """benchmarks/bench_precision.py in this process: the fast path against float32 NCHW, with the roofline."""
    sys.path.insert(0, str(BENCH_DIR))
    import bench_precision as bp  # noqa: E402

    result = bp.run(device, "auto", repeats=repeats, out=lambda line: print(line, file=sys.stderr))
    peaks = result["peak_gflops"]
    rows = [("matmul peak 2048^3, fp32 / bf16 (GFLOP/s)", f"{peaks['fp32']:.0f}", f"{peaks['bf16']:.0f}",
             f"the roofline's ceilings, measured now on {device}")]
    for r in result["workloads"]:
        f, s = r["fp32"], r["fast"]
        rows.append((f"{r['workload']}: fast vs fp32 NCHW (ms/step)", f"{s['median_s'] * 1e3:.0f}",
                     f"{f['median_s'] * 1e3:.0f}", f"x{r['speedup_median']:.2f} ({r['fast_path']}); roofline "
                     f"{s['roofline']:.1%} vs {f['roofline']:.1%}; {r['gflop_per_step']:.1f} GFLOP/step"))
    return rows


def bench_node(steps: int, repeats: int, device: str, timeout: float) -> list[tuple]:
    code, out = _run_script("bench_node_overhead.py", ["--steps", str(steps), "--repeats", str(repeats),
                                                       "--device", device], timeout)
    rows = node_rows(out, steps, repeats)
    if code != 0 or not rows:
        tail = out.strip().splitlines()[-1] if out.strip() else ""
        return [("node vs direct call", "failed", "", tail)]
    return rows


def node_rows(out: str, steps: int, repeats: int) -> list[tuple]:
    """The table rows of benchmarks/bench_node_overhead.py's printed summary (wall-clock and CPU time)."""
    rows = []
    for what in ("wall-clock", "CPU time"):
        match = re.search(rf"^{what}: node .*?\(([\d.]+) s per variation.*?core .*?\(([\d.]+) s per variation.*?\n"
                          rf"\s*ratio node / core: ([\d.]+) of medians", out, re.M)
        if match:
            rows.append((f"node vs direct call, {what} (s/variation)", match.group(1), match.group(2),
                         f"ratio {match.group(3)} (goal <= 1.05); {steps} steps, {repeats} repeats"))
    return rows


def _classifier_features(classifier, images):
    import torch

    with torch.no_grad():
        gray = images.mean(1, keepdim=True) if images.shape[1] != 1 else images
        return classifier.features(gray * 2 - 1).mean((2, 3))  # its 4x4 grid averaged: 64-d


def bench_samplers(model_path: Path, classifier_path: Path, encoder_path: Path | None, conditions: int, per: int,
                   ddpm_steps: int, tolerance: float, seed: int = 0) -> list[tuple]:
    """Fewest network evaluations per sampler whose Fréchet distance to held-out digits is within `tolerance` of
    DDPM with `ddpm_steps` steps (same conditions and seeds)."""
    import torch

    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.encoders import export_encoder, load_encoder
    from semantica_core.metrics.frechet import frechet_distance_features
    from semantica_core.pipeline import sample_variations
    from training import demo_data
    from training.eval_variations import encode, load_classifier

    if not model_path.is_file() or not classifier_path.is_file():
        return [("sampler evaluations vs DDPM", "skipped", "", f"needs {model_path} and {classifier_path}")]
    data_dir = REPO_ROOT / "out" / "bench" / "demo-data"
    if not (data_dir / "heldout.jsonl").is_file():
        demo_data.write_dataset(str(data_dir))
    images, _ = demo_data.load_split(str(data_dir), "heldout")
    classifier, _ = load_classifier(str(classifier_path))
    model = load_checkpoint(str(model_path))
    if encoder_path is None or not encoder_path.is_file():
        encoder_path = REPO_ROOT / "out" / "bench" / "efficientnet-lite0.safetensors"
        if not encoder_path.is_file():
            export_encoder("efficientnet-lite0", str(encoder_path))
    encoder = load_encoder(str(encoder_path))
    cond = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:conditions]]
    embeds = encode(encoder, cond.repeat(1, 3, 1, 1))
    reference = _classifier_features(classifier, images)

    calls = [0]
    hook = model.network.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def quality(sampler: str, steps: int) -> tuple[float, int, float]:
        calls[0] = 0
        start = time.perf_counter()
        spacing = "uniform" if sampler == "ddpm" else "karras"
        out = sample_variations(model, embeds, seed=seed, count=per, steps=steps, guidance=1.0, sampler=sampler,
                                spacing=spacing)
        seconds = time.perf_counter() - start
        fd = float(frechet_distance_features(_classifier_features(classifier, out), reference))
        return fd, calls[0], seconds

    try:
        target_fd, target_nfe, target_s = quality("ddpm", ddpm_steps)
        rows = [(f"DDPM {ddpm_steps} steps: FD to held-out digits", f"{target_fd:.2f}", "",
                 f"{target_nfe} evaluations, {target_s:.1f}s; {conditions}x{per} samples, guidance 1")]
        for sampler in ("ddim", "euler", "heun", "dpmpp_2m"):
            found = None
            for steps in (5, 10, 20, 40):
                fd, nfe, _ = quality(sampler, steps)
                if fd <= target_fd * (1 + tolerance):
                    found = (steps, fd, nfe)
                    break
            if found:
                rows.append((f"{sampler}: evaluations for DDPM-{ddpm_steps} quality", str(found[2]),
                             str(target_nfe), f"{found[0]} steps, FD {found[1]:.2f} (<= {1 + tolerance:.2f}x DDPM)"))
            else:
                rows.append((f"{sampler}: evaluations for DDPM-{ddpm_steps} quality", "> 40 steps", str(target_nfe),
                             f"FD at 40 steps {fd:.2f}"))
    finally:
        hook.remove()
    return rows


def format_rows(rows: list[tuple]) -> str:
    headers = ("measurement", "semantica", "reference", "notes")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(4)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    import torch

    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="tiny", help="network preset of the UNet comparison")
    parser.add_argument("--batch", type=int, default=8, help="batch of the UNet comparison")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the UNet and node benchmarks")
    parser.add_argument("--node-steps", type=int, default=10, help="sampler steps of the node benchmark")
    parser.add_argument("--node-repeats", type=int, default=3)
    parser.add_argument("--model", default=str(REPO_ROOT / "models" / "demo" / "mnist-pairs.safetensors"),
                        help="model of the sampler comparison (the embedded MNIST demo model)")
    parser.add_argument("--classifier", default=str(REPO_ROOT / "models" / "eval" / "mnist-classifier.safetensors"))
    parser.add_argument("--encoder", default=None, help="the model's encoder file (default: exported once)")
    parser.add_argument("--conditions", type=int, default=16, help="held-out digits of the sampler comparison")
    parser.add_argument("--per-condition", type=int, default=4)
    parser.add_argument("--ddpm-steps", type=int, default=1000)
    parser.add_argument("--tolerance", type=float, default=0.1, help="allowed FD excess over DDPM (0.1 = 10%%)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per benchmark script")


def run(args) -> int:
    parts = args.only or list(PARTS)
    rows: list[tuple] = []
    for part in parts:
        start = time.perf_counter()
        print(f"[bench] {part} ...", file=sys.stderr, flush=True)
        if part == "precision":
            rows += bench_precision(args.device, args.repeats)
        elif part == "unet":
            rows += bench_unet_training(args.preset, args.batch, args.repeats, args.device, args.timeout)
            rows += bench_unet_sampling(args.preset, args.batch, args.repeats, args.device)
        elif part == "node":
            rows += bench_node(args.node_steps, args.node_repeats, args.device, args.timeout)
        elif part == "samplers":
            rows += bench_samplers(Path(args.model), Path(args.classifier),
                                   Path(args.encoder) if args.encoder else None, args.conditions,
                                   args.per_condition, args.ddpm_steps, args.tolerance)
        print(f"[bench] {part}: {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    print(format_rows(rows))
    return 0
