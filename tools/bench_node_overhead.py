"""Time per variation through the ComfyUI node (a real server, over HTTP) against a direct semantica_core call.

The node side is what a user pays: POST /prompt, the server runs SemanticaVariationSampler and SaveImage (PNG
files), and the client polls /history until the prompt is done. The loader and encoder nodes are cached by ComfyUI
after the warm-up, so each timed prompt re-runs only the sampler and SaveImage (a new seed each time). The core side
is `sample_variations` with the same model file, embeddings and settings, in this process. Node and core runs
alternate, so drift hits both alike. Both use the same device and the same number of torch threads.

    python -m tools.bench_node_overhead                      # tiny preset, 64 px, 4 variations, 30 steps
    python -m tools.bench_node_overhead --preset base64 --steps 50 --repeats 3 --device cuda

Reports the medians and the ratio node / core (goal: at most 1.05 at settings where a prompt takes seconds), in
wall-clock time and in CPU time (Linux: the server's CPU seconds from /proc plus this process's). On a shared
machine the CPU-time ratio is the one other processes do not disturb.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tools.hostctl import ComfyServer, default_comfy_dir


def write_files(models_dir: Path, preset: str) -> tuple[Path, Path]:
    """A random-weight EfficientNet-Lite0 encoder and a random `preset` model for it (compute is what counts)."""
    from semantica_core.checkpoint import save_checkpoint
    from semantica_core.encoders import export_encoder
    from semantica_core.networks import build_network
    from semantica_core.presets import default_diffusion_config, network_preset

    encoder_path = models_dir / "semantica" / "encoders" / "bench-encoder.safetensors"
    encoder = export_encoder("efficientnet-lite0", encoder_path, random=True, image_size=128)
    config = network_preset(preset, encoder.token_dim, encoder.pooled_dim)
    torch.manual_seed(0)
    network = build_network("pair_conditioned", config)
    with torch.no_grad():  # untrained networks have zero output layers; random ones cost the same and are honest
        for p in network.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    model_path = save_checkpoint(
        models_dir / "semantica" / f"bench-{preset}.safetensors", kind="pair_conditioned", network_config=config,
        diffusion_config=default_diffusion_config(preset, config.resolution), state_dict=network.state_dict(),
        encoder_info=encoder.info(),
    )
    return encoder_path, model_path


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (Linux /proc); 0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(preset: str = "tiny", size: int = 64, count: int = 4, steps: int = 30, sampler: str = "dpmpp_2m",
            guidance: float = 3.0, repeats: int = 5, device: str = "cpu", log=print) -> dict:
    """Interleaved node and core runs: {"node"|"core": {"wall": [s per prompt], "cpu": [CPU s per prompt]}, and
    the settings}. `log` gets one line per repeat."""
    import skimage.data

    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.encoders import load_encoder
    from semantica_core.pipeline import sample_variations

    with tempfile.TemporaryDirectory(prefix="semantica-bench-") as tmp:
        base = Path(tmp)
        encoder_path, model_path = write_files(base / "models", preset)
        server = ComfyServer(base, comfy_dir=default_comfy_dir(), log_path=base / "comfyui.log", cpu=device == "cpu")
        server.start(timeout=180)
        try:
            client = server.client()
            photo = skimage.data.astronaut()
            image_name = client.upload_image(photo, name="bench_photo.png")

            def prompt(seed: int) -> dict:
                return {
                    "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
                    "2": {"class_type": "SemanticaUNetLoader",
                          "inputs": {"model_name": model_path.name, "weights": "ema"}},
                    "3": {"class_type": "SemanticaEncoderLoader", "inputs": {"encoder_name": encoder_path.name}},
                    "4": {"class_type": "SemanticaEncodeImage", "inputs": {"encoder": ["3", 0], "image": ["1", 0]}},
                    "5": {"class_type": "SemanticaVariationSampler", "inputs": dict(
                        model=["2", 0], embeds=["4", 0], seed=seed, count=count, steps=steps, guidance=guidance,
                        sampler=sampler, spacing="karras", width=size, height=size)},
                    "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "bench"}},
                }

            dev = torch.device(device)
            model = load_checkpoint(model_path, weights="raw", device=dev)
            encoder = load_encoder(encoder_path, device=dev)
            embeds = encoder(torch.from_numpy(photo.astype(np.float32) / 255).movedim(-1, 0)[None].to(dev))

            def core(seed: int) -> None:
                sample_variations(model, embeds, seed=seed, count=count, steps=steps, guidance=guidance,
                                  sampler=sampler, spacing="karras", width=size or None, height=size or None)
                if dev.type == "cuda":
                    torch.cuda.synchronize()

            def node(seed: int) -> None:
                client.run(prompt(seed), timeout=3600)

            node(10**6)  # warm-up: loads the model and the encoder, encodes the photo
            core(10**6)
            server_pid = server.process.pid
            result = {side: {"wall": [], "cpu": []} for side in ("node", "core")}
            for i in range(repeats):
                for side, call in (("node", node), ("core", core)):
                    cpu_start = time.process_time() + process_cpu_seconds(server_pid)
                    start = time.perf_counter()
                    call(1000 + i)
                    result[side]["wall"].append(time.perf_counter() - start)
                    result[side]["cpu"].append(time.process_time() + process_cpu_seconds(server_pid) - cpu_start)
                log(f"repeat {i + 1}/{repeats}: node {result['node']['wall'][-1]:.3f} s "
                    f"({result['node']['cpu'][-1]:.2f} CPU s), core {result['core']['wall'][-1]:.3f} s "
                    f"({result['core']['cpu'][-1]:.2f} CPU s)")
        finally:
            server.stop()
    result.update(preset=preset, size=size, count=count, steps=steps, sampler=sampler, guidance=guidance,
                  repeats=repeats, device=device, threads=torch.get_num_threads())
    return result


def rows(result: dict) -> list[tuple[str, str, str, str]]:
    """Table rows (measurement, node, core, notes) of `measure`'s result, per variation, wall-clock and CPU time."""
    out = []
    for what, key in (("wall-clock", "wall"), ("CPU time", "cpu")):
        node, core = (statistics.median(result[side][key]) for side in ("node", "core"))
        out.append((f"node vs direct call, {what} (s/variation)", f"{node / result['count']:.3f}",
                    f"{core / result['count']:.3f}", f"ratio {node / core:.3f} (goal <= 1.05); {result['steps']} "
                    f"steps, {result['repeats']} repeats"))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=64, help="width and height in pixels (0 = the model's)")
    parser.add_argument("--count", type=int, default=4, help="variations per prompt")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5, help="timed prompts per side")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads on both sides (0 = torch's default); 1 is steadier on a busy machine")
    args = parser.parse_args(argv)
    if args.threads:  # the server inherits OMP_NUM_THREADS; this process sets its own
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    result = measure(args.preset, args.size, args.count, args.steps, args.sampler, args.guidance, args.repeats,
                     args.device, log=lambda line: print(line, flush=True))
    size = f"{args.size}x{args.size}" if args.size else "the model's resolution"
    print(f"\nsettings: preset {args.preset}, {size}, {args.count} variations, {args.steps} steps, {args.sampler}, "
          f"guidance {args.guidance}, device {args.device}, torch threads {result['threads']}, "
          f"{args.repeats} interleaved repeats")
    for what, key in (("wall-clock", "wall"), ("CPU time", "cpu")):
        node, core = result["node"][key], result["core"][key]
        node_median, core_median = statistics.median(node), statistics.median(core)
        print(f"{what}: node (HTTP submit -> history, incl. PNG save) median {node_median:.3f} s per prompt "
              f"({node_median / args.count:.3f} s per variation, min {min(node):.3f}); core (sample_variations) "
              f"median {core_median:.3f} s ({core_median / args.count:.3f} s per variation, min {min(core):.3f})")
        print(f"  ratio node / core: {node_median / core_median:.3f} of medians, {min(node) / min(core):.3f} of "
              f"minima (goal <= 1.05)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
