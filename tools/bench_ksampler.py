"""Time per image through ComfyUI's KSampler (Semantica's MODEL) against our own Variations node, equal settings.

Both sides are prompts to one real server over HTTP, on the embedded demo model and example digit: KSampler
(Semantica Load Model for KSampler, Semantica Conditioning, Semantica Empty Latent, VAEDecode of `pixel_space`,
SaveImage) against Semantica Variations (+ SaveImage), with the same sampler, Karras noise levels, steps, guidance
(KSampler's cfg) and number of images. The loaders and the encoder are cached by ComfyUI after the warm-up, so
each timed prompt re-runs the sampler (a new seed) and the PNG save. The two sides alternate, so drift hits both.

    python -m tools.bench_ksampler                                # mnist-pairs, 32 px, 8 images, 30 steps
    python -m tools.bench_ksampler --size 64 --count 16 --sampler dpmpp_2m --device cuda

Prints the medians per image and the ratio KSampler / ours, in wall-clock and CPU time (the server's, from /proc:
on a shared machine the one other processes do not disturb).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from tools.bench_node_overhead import process_cpu_seconds
from tools.hostctl import ComfyServer, default_comfy_dir

SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m")  # the ones both sides have


def prompts(args) -> dict:
    """side -> (seed -> API prompt)."""
    conditioning = {
        "img": {"class_type": "LoadImage", "inputs": {"image": args.image}},
        "enc": {"class_type": "SemanticaEncoderLoader", "inputs": {"encoder_name": args.encoder}},
        "emb": {"class_type": "SemanticaEncodeImage", "inputs": {"encoder": ["enc", 0], "image": ["img", 0]}},
    }

    def ksampler(seed: int) -> dict:
        return {
            **conditioning,
            "c": {"class_type": "SemanticaConditioning", "inputs": {"embeds": ["emb", 0]}},
            "m": {"class_type": "SemanticaKSamplerModelLoader", "inputs": {"model_name": args.model, "weights": "ema"}},
            "lat": {"class_type": "SemanticaEmptyLatent",
                    "inputs": {"width": args.size, "height": args.size, "batch_size": args.count}},
            "ks": {"class_type": "KSampler", "inputs": dict(
                model=["m", 0], positive=["c", 0], negative=["c", 1], latent_image=["lat", 0], seed=seed,
                steps=args.steps, cfg=args.guidance, sampler_name=args.sampler, scheduler="karras", denoise=1.0)},
            "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
            "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "bench_ks"}},
        }

    def ours(seed: int) -> dict:
        return {
            **conditioning,
            "u": {"class_type": "SemanticaUNetLoader", "inputs": {"model_name": args.model, "weights": "ema"}},
            "var": {"class_type": "SemanticaVariationSampler", "inputs": dict(
                model=["u", 0], embeds=["emb", 0], seed=seed, count=args.count, steps=args.steps,
                guidance=args.guidance, sampler=args.sampler, spacing="karras", width=args.size, height=args.size)},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["var", 0], "filename_prefix": "bench_ours"}},
        }

    return {"ksampler": ksampler, "ours": ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist-pairs.safetensors", help="a pair-conditioned model the server lists")
    parser.add_argument("--encoder", default="efficientnet-lite0.safetensors")
    parser.add_argument("--image", default="semantica_example_digit.png", help="a file in the server's input folder")
    parser.add_argument("--size", type=int, default=32, help="width and height in pixels")
    parser.add_argument("--count", type=int, default=8, help="images per prompt")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sampler", default="euler_ancestral", choices=SAMPLERS)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5, help="timed prompts per side")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="semantica-bench-ksampler-") as tmp:
        server = ComfyServer(Path(tmp), comfy_dir=default_comfy_dir(), log_path=Path(tmp) / "comfyui.log",
                             cpu=args.device == "cpu")
        server.start(timeout=180)
        try:
            client = server.client()
            sides = prompts(args)
            for side, prompt in sides.items():  # warm-up: loads the models and the encoder, encodes the image
                client.run(prompt(10**6), timeout=3600)
            times = {side: [] for side in sides}
            cpu = {side: [] for side in sides}
            for i in range(args.repeats):
                for side, prompt in sides.items():
                    cpu_start = process_cpu_seconds(server.process.pid)
                    start = time.perf_counter()
                    client.run(prompt(1000 + i), timeout=3600)
                    times[side].append(time.perf_counter() - start)
                    cpu[side].append(process_cpu_seconds(server.process.pid) - cpu_start)
                print(f"repeat {i + 1}/{args.repeats}: " + ", ".join(
                    f"{side} {times[side][-1]:.3f} s ({cpu[side][-1]:.2f} CPU s)" for side in sides), flush=True)
        finally:
            server.stop()

    print(f"\nsettings: {args.model}, {args.size}x{args.size}, {args.count} images per prompt, {args.steps} steps, "
          f"{args.sampler}, karras, guidance/cfg {args.guidance}, device {args.device}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {args.repeats} interleaved repeats")
    for what, unit in (("wall-clock", times), ("CPU time", cpu)):
        ks, ours = statistics.median(unit["ksampler"]), statistics.median(unit["ours"])
        print(f"{what}: KSampler {ks / args.count:.4f} s per image, Semantica Variations {ours / args.count:.4f} s "
              f"per image; ratio KSampler / ours {ks / ours:.3f} (medians), "
              f"{min(unit['ksampler']) / min(unit['ours']):.3f} (minima)")


if __name__ == "__main__":
    main()
