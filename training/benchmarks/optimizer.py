"""The trainers' fused AdamW (semantica_core.train_state.adamw) against torch's default AdamW on a CPU, which loops
over the parameter tensors: the optimizer step alone, and the whole training step of both tiny networks (the
precision benchmark's `train-single` and `train-pairs` workloads, float32), the two alternating repeat by repeat.

    python -m training.benchmarks.optimizer --repeats 9
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from semantica_core.precision import Precision
from training.benchmarks.precision import Workload


def loop_against_fused(device: str = "cpu", repeats: int = 9, workloads=("train-single", "train-pairs")) -> list:
    """[{workload, parameters, loop_step_ms, fused_step_ms, loop_optimizer_ms, fused_optimizer_ms}]: medians."""
    device = torch.device(device)
    results = []
    for name in workloads:
        runs = {"fused": Workload(name, Precision(device.type), device),
                "loop": Workload(name, Precision(device.type), device)}
        runs["loop"].optimizer = torch.optim.AdamW(runs["loop"].network.parameters(), lr=1e-4, foreach=False)
        times = {f"{key}_{part}": [] for key in runs for part in ("step", "optimizer")}
        for repeat in range(repeats + 1):  # the first round warms up
            for key, run in runs.items() if repeat % 2 else reversed(runs.items()):
                step = run.timed()
                start = time.perf_counter()  # the optimizer again on the same gradients: its time alone
                run.optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if repeat:
                    times[f"{key}_step"].append(step * 1e3)
                    times[f"{key}_optimizer"].append((time.perf_counter() - start) * 1e3)
        results.append({"workload": name, "parameters": sum(p.numel() for p in runs["loop"].network.parameters()),
                        **{f"{key}_ms": statistics.median(values) for key, values in times.items()}})
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, float32, medians of "
          f"{args.repeats} alternating repeats")
    for r in loop_against_fused(args.device, args.repeats):
        print(f"{r['workload']} ({r['parameters'] / 1e6:.2f}M parameters): optimizer step {r['loop_optimizer_ms']:.2f}"
              f" -> {r['fused_optimizer_ms']:.2f} ms (x{r['loop_optimizer_ms'] / r['fused_optimizer_ms']:.1f}); "
              f"training step {r['loop_step_ms']:.1f} -> {r['fused_step_ms']:.1f} ms "
              f"(x{r['loop_step_ms'] / r['fused_step_ms']:.3f})")


if __name__ == "__main__":
    main()
