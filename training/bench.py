"""`semantica bench`: the pack's performance claims, measured side by side in one run, printed as one table.

  precision  the fast path (precision auto: bf16 autocast + channels-last where the device has native bf16)
             against float32 NCHW in the same run, for training and sampling of both networks, with the roofline
             fraction of each (FLOPs of the step over the peak this run measures for a large matmul in the same
             dtype): training/benchmarks/precision.py.
  unet       training throughput (forward, backward, AdamW step) of PairConditionedUNet against diffusers'
             UNet2DConditionModel of matched size, once in float32 NCHW (the same-mode ratio) and once with bf16
             autocast + channels-last, and the ratio of each side's faster mode beside it; and sampling throughput
             (forward only, no grad) of the same two networks in both modes: training/benchmarks/unet.py.
  samplers   network evaluations each sampler needs to reach the quality of 1000-step DDPM on the embedded MNIST
             demo model (models/demo/mnist-pairs.safetensors): quality = Fréchet distance to held-out digits in the
             demo classifier's 64-d features, the same conditions and seeds for every sampler:
             training/benchmarks/samplers.py.
  batch      time per image of the guided sampling forward on the same model at batches of 4 to 200 images, split
             into the CPU's cache-sized network calls (what the Denoiser does) against one call of the whole batch:
             training/benchmarks/batch.py.
The node overhead (through a real ComfyUI server) needs the checkout: `make bench` adds it (tools/bench.py).
The default run is short (a few minutes on a CPU); each benchmark module takes larger settings on its own.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

PARTS = ("precision", "unet", "samplers", "batch")
Row = tuple[str, str, str, str]  # measurement, semantica, reference, notes


def unet_training_rows(results: dict) -> list[Row]:
    """Rows of training/benchmarks/unet.train_throughput's results by mode, then each side at its faster mode."""
    rows, rates = [], {}
    for mode, r in results.items():
        ours, theirs = r["ours"]["images_per_s"], r["diffusers"]["images_per_s"]
        rates[mode] = {"ours": ours, "diffusers": theirs}
        params = f"params {r['ours']['parameters'] / 1e6:.2f}M vs {r['diffusers']['parameters'] / 1e6:.2f}M"
        rows.append((f"training throughput, {mode} (images/s)", f"{ours:.1f}", f"{theirs:.1f}",
                     f"ratio {ours / theirs:.2f}; {r['preset']}, batch {r['batch']}, fwd+bwd+AdamW; {params}"))
    return rows + best_mode_row("training", rates)


def unet_sampling_rows(rates: dict, preset: str, batch: int) -> list[Row]:
    rows = [(f"sampling throughput, {mode} (images x steps/s)", f"{r['ours']:.1f}", f"{r['diffusers']:.1f}",
             f"ratio {r['ours'] / r['diffusers']:.2f}; {preset}, batch {batch}, forward only")
            for mode, r in rates.items()]
    return rows + best_mode_row("sampling", rates)


def best_mode_row(what: str, rates: dict) -> list[Row]:
    """One row: each side at the mode that is fastest for it in this run (rates: mode -> {"ours", "diffusers"})."""
    if len(rates) < 2:
        return []
    best = {name: max(rates, key=lambda mode: rates[mode][name]) for name in ("ours", "diffusers")}
    ours, theirs = rates[best["ours"]]["ours"], rates[best["diffusers"]]["diffusers"]
    return [(f"{what}, each at its fastest mode", f"{ours:.1f}", f"{theirs:.1f}",
             f"ratio {ours / theirs:.2f}; ours {best['ours']}, diffusers {best['diffusers']}")]


def precision_rows(result: dict, device: str) -> list[Row]:
    """Rows of training/benchmarks/precision.run's result: the matmul peaks, then each workload."""
    peaks = result["peak_gflops"]
    rows = [("matmul peak, fp32 / bf16 (GFLOP/s)", f"{peaks['fp32']:.0f}", f"{peaks['bf16']:.0f}",
             f"the roofline's ceilings, measured now on {device}")]
    for r in result["workloads"]:
        f, s = r["fp32"], r["fast"]
        rows.append((f"{r['workload']}: fast vs fp32 NCHW (ms/step)", f"{s['median_s'] * 1e3:.0f}",
                     f"{f['median_s'] * 1e3:.0f}", f"x{r['speedup_median']:.2f} ({r['fast_path']}); roofline "
                     f"{s['roofline']:.1%} vs {f['roofline']:.1%}; {r['gflop_per_step']:.1f} GFLOP/step"))
    return rows


def sampler_rows(result: dict) -> list[Row]:
    """Rows of training/benchmarks/samplers.sampler_evaluations's result."""
    ddpm = result["ddpm"]
    n = ddpm["steps"]
    rows = [(f"DDPM {n} steps: FD to held-out digits", f"{ddpm['fd']:.2f}", "",
             f"{ddpm['evaluations']} evaluations, {ddpm['seconds']:.1f}s; {result['conditions']}x"
             f"{result['per_condition']} samples, guidance 1")]
    for sampler, r in result["samplers"].items():
        what = f"{sampler}: evaluations for DDPM-{n} quality"
        if r["matched"]:
            rows.append((what, str(r["evaluations"]), str(ddpm["evaluations"]),
                         f"{r['steps']} steps, FD {r['fd']:.2f} (<= {1 + result['tolerance']:.2f}x DDPM)"))
        else:
            rows.append((what, f"> {r['steps']} steps", str(ddpm["evaluations"]), f"FD at {r['steps']} steps "
                         f"{r['fd']:.2f}"))
    return rows


def batch_rows(results: list[dict]) -> list[Row]:
    """Rows of training/benchmarks/batch.split_against_whole's results."""
    return [(f"guided forward, {r['batch']} images (ms/image)", f"{r['split_ms']:.2f}", f"{r['whole_ms']:.2f}",
             f"x{r['whole_ms'] / r['split_ms']:.2f}; split into calls of {r['rows_per_call']} rows vs one call of "
             f"{2 * r['batch']}") for r in results]


def format_rows(rows: list[Row]) -> str:
    headers = ("measurement", "semantica", "reference", "notes")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(4)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, parts=PARTS) -> None:
    import torch

    parser.add_argument("--only", action="append", choices=parts, help="run only these parts (repeatable)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="tiny", help="network preset of the UNet comparison")
    parser.add_argument("--batch", type=int, default=8, help="batch of the UNet comparison")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each measurement")
    parser.add_argument("--model", default="models/demo/mnist-pairs.safetensors",
                        help="model of the sampler comparison (the embedded MNIST demo model)")
    parser.add_argument("--classifier", default="models/eval/mnist-classifier.safetensors")
    parser.add_argument("--encoder", default="models/demo/encoders/efficientnet-lite0.safetensors",
                        help="the model's encoder file")
    parser.add_argument("--data", default="out/bench/demo-data", help="the demo digits (written when missing)")
    parser.add_argument("--conditions", type=int, default=16, help="held-out digits of the sampler comparison")
    parser.add_argument("--per-condition", type=int, default=4)
    parser.add_argument("--ddpm-steps", type=int, default=1000)
    parser.add_argument("--tolerance", type=float, default=0.1, help="allowed FD excess over DDPM (0.1 = 10%%)")


def part_rows(part: str, args) -> list[Row]:
    from training.benchmarks import batch, precision, samplers, unet

    if part == "precision":
        return precision_rows(precision.run(args.device, "auto", repeats=args.repeats,
                                            out=lambda line: print(line, file=sys.stderr)), args.device)
    if part == "unet":
        modes = {"fp32": {}, "bf16": {"dtype": "bf16", "channels_last": True}}
        training = {mode: unet.train_throughput(args.preset, args.batch, args.device, repeats=args.repeats, warmup=2,
                                                **flags) for mode, flags in modes.items()}
        sampling = unet.sampling_throughput(args.preset, args.batch, args.device, args.repeats)
        return unet_training_rows(training) + unet_sampling_rows(sampling, args.preset, args.batch)
    if part == "samplers":
        needed = [p for p in (args.model, args.classifier, args.encoder) if not Path(p).is_file()]
        if needed:
            return [("sampler evaluations vs DDPM", "skipped", "", f"needs {', '.join(needed)}")]
        return sampler_rows(samplers.sampler_evaluations(
            Path(args.model), Path(args.classifier), Path(args.encoder), Path(args.data), args.conditions,
            args.per_condition, args.ddpm_steps, args.tolerance))
    if part == "batch":
        needed = [p for p in (args.model, args.encoder) if not Path(p).is_file()]
        if needed:
            return [("guided forward by batch", "skipped", "", f"needs {', '.join(needed)}")]
        return batch_rows(batch.split_against_whole(Path(args.model), Path(args.encoder), args.device,
                                                    repeats=args.repeats))
    raise ValueError(f"unknown part {part!r}")


def run(args, more: dict[str, Callable] | None = None) -> int:
    """The table of `args.only` (default: every part, then those of `more`: name -> args -> rows). A part that
    fails gets a "failed" row (its traceback on stderr) and the exit status 1; the others still run."""
    parts = args.only or [*PARTS, *(more or {})]
    rows: list[Row] = []
    failed = False
    for part in parts:
        start = time.perf_counter()
        print(f"[bench] {part} ...", file=sys.stderr, flush=True)
        try:
            rows += (more or {}).get(part, lambda a: part_rows(part, a))(args)
        except Exception as error:  # noqa: BLE001  (one broken part must not hide the others' figures)
            traceback.print_exc()
            rows.append((part, "failed", "", f"{type(error).__name__}: {error}"[:120]))
            failed = True
        print(f"[bench] {part}: {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    print(format_rows(rows))
    return 1 if failed else 0
