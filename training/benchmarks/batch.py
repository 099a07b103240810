"""Time per image of the guided sampling forward (the Denoiser with guidance 3, as `sample_variations` calls it) on
the embedded MNIST demo model at several batch sizes: the batch split into the CPU's cache-sized calls
(semantica_core.diffusion.denoiser.rows_per_call, what the project does) against the whole batch in one call.
The two alternate repeat by repeat, so load on the machine falls on both alike."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from unittest import mock

import torch

BATCHES = (4, 16, 64, 200)  # images; guidance doubles the network's rows


def split_against_whole(model_path: Path, encoder_path: Path, device: str = "cpu", batches=BATCHES,
                        repeats: int = 5) -> list[dict]:
    """[{batch, rows_per_call, split_ms, whole_ms}]: median milliseconds per image of one guided forward."""
    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.diffusion import denoiser as denoiser_module
    from semantica_core.encoders import load_encoder
    from training.eval_variations import encode

    model = load_checkpoint(str(model_path), weights="ema", device=device)
    resolution = model.resolution
    generator = torch.Generator().manual_seed(0)
    embeds = encode(load_encoder(str(encoder_path)), torch.rand(max(batches), 3, resolution, resolution,
                                                                generator=generator)).to(device)
    results = []
    for batch in batches:
        x = torch.randn(batch, model.channels, resolution, resolution, generator=generator).to(device)
        sigma = torch.full((batch,), 3.0, device=device)
        rows = embeds.select(torch.arange(batch))

        def forward():
            start = time.perf_counter()
            model.denoiser(x, sigma, embeds=rows, guidance_scale=3.0)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return (time.perf_counter() - start) * 1e3 / batch

        times = {"split": [], "whole": []}
        with torch.no_grad():
            for repeat in range(repeats + 1):  # the first round warms up
                split = forward()
                with mock.patch.object(denoiser_module, "CPU_PIXELS_PER_CALL", 1 << 62):
                    whole = forward()
                if repeat:
                    times["split"].append(split)
                    times["whole"].append(whole)
        results.append({"batch": batch, "rows_per_call": min(2 * batch, denoiser_module.rows_per_call(x)),
                        "split_ms": statistics.median(times["split"]), "whole_ms": statistics.median(times["whole"])})
    return results
