"""Training throughput of PairConditionedUNet against diffusers' UNet2DConditionModel of the same size.

Both networks get the same batch, resolution and token sequence and run in the same training loop: one step is
forward, backward of a mean-square loss, gradient clipping and an AdamW update, as in `semantica train pairs`. Warm-up and timed steps alternate between the two models so that clock and thermal drift hit both alike.

`train_throughput` returns the figures of one mode; `sampling_throughput` times the forward pass alone (what a
sampler step costs) in both modes, interleaved. `semantica bench --only unet` and benchmarks/gpu_check.py call them.

    python -m training.benchmarks.unet --device cpu --preset tiny --batch 8
    python -m training.benchmarks.unet --device cuda --dtype bf16 --compile --preset base64 --batch 64
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from semantica_core.networks import PairConditionedUNet, UNetConfig
from semantica_core.presets import network_preset
from semantica_core.train_state import adamw

SIDES = ("ours", "diffusers")


def diffusers_twin(cfg: UNetConfig):
    """UNet2DConditionModel with our layout: same widths, res blocks, attention levels, heads, scale-shift FiLM;
    the pooled vector through an MLP into the time embedding (class_embed_type="projection"); the tokens projected
    once to the context width (encoder_hid_dim_type="text_proj"), as ours are, rather than in every block."""
    from diffusers import UNet2DConditionModel

    levels = range(len(cfg.channel_mult))
    attention = [cfg.resolution // 2**i in cfg.attention_resolutions for i in levels]
    widths = [cfg.base_channels * m for m in cfg.channel_mult]
    return UNet2DConditionModel(
        sample_size=cfg.resolution,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=widths,
        layers_per_block=cfg.num_res_blocks,
        attention_head_dim=[cfg.heads(w) for w in widths],  # diffusers' legacy name: the number of heads
        cross_attention_dim=cfg.context_dim,
        encoder_hid_dim=cfg.token_dim,
        encoder_hid_dim_type="text_proj",
        norm_num_groups=32,
        dropout=cfg.dropout,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="projection",
        projection_class_embeddings_input_dim=cfg.pooled_dim,
    )


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(cfg: UNetConfig, batch: int, resolution: int, tokens: int, device: torch.device, memory_format):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, resolution, resolution, generator=g)
    x = x.to(device).contiguous(memory_format=memory_format)
    c_noise = (torch.rand(batch, generator=g) * 999).to(device)
    context = torch.randn(batch, tokens, cfg.token_dim, generator=g).to(device)
    pooled = torch.randn(batch, cfg.pooled_dim, generator=g).to(device)
    return x, c_noise, context, pooled


def _pair(cfg: UNetConfig, device: torch.device, memory_format, inputs):
    """Both networks from one seed, and the eager forward of each on the shared inputs."""
    x, c_noise, context, pooled = inputs
    torch.manual_seed(0)
    models = {"ours": PairConditionedUNet(cfg).to(device, memory_format=memory_format),
              "diffusers": diffusers_twin(cfg).to(device, memory_format=memory_format)}
    calls = {
        "ours": lambda m: m(x, c_noise, context, pooled),
        "diffusers": lambda m: m(x, c_noise, encoder_hidden_states=context, class_labels=pooled).sample,
    }
    return models, calls


def _interleaved(timed, names, repeats: int) -> dict[str, list[float]]:
    """`repeats` timings of each name, who goes first alternating, so that drift hits all alike."""
    times = {name: [] for name in names}
    for i in range(repeats):
        for name in list(names) if i % 2 == 0 else list(names)[::-1]:
            times[name].append(timed(name))
    return times


def train_throughput(preset: str = "tiny", batch: int = 8, device: str = "cpu", dtype: str = "fp32",
                     compile: bool = False, channels_last: bool = False, resolution: int | None = None,
                     tokens: int = 49, token_dim: int = 1280, pooled_dim: int = 1280, warmup: int = 3,
                     repeats: int = 10) -> dict:
    """One mode of the training comparison: {"ours"|"diffusers": {median_s, min_s, images_per_s, gflop_per_step,
    parameters}, and the settings}. dtype "bf16" is autocast."""
    device = torch.device(device)
    cfg = network_preset(preset, token_dim=token_dim, pooled_dim=pooled_dim)
    if not isinstance(cfg, UNetConfig):
        raise ValueError(f"preset {preset} is not a pair-conditioned preset")
    resolution = resolution or cfg.resolution
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    models, calls = _pair(cfg, device, memory_format, _inputs(cfg, batch, resolution, tokens, device, memory_format))
    runners = {name: torch.compile(m) if compile else m for name, m in models.items()}
    optimizers = {name: adamw(m.parameters(), device, lr=1e-4) for name, m in models.items()}

    def step(name: str, eager: bool = False) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = calls[name](models[name] if eager else runners[name])
        out.float().square().mean().backward()
        torch.nn.utils.clip_grad_norm_(models[name].parameters(), 1.0)
        optimizers[name].step()

    def timed(name: str) -> float:
        _sync(device)
        start = time.perf_counter()
        step(name)
        _sync(device)
        return time.perf_counter() - start

    flops = {}
    for name in SIDES:
        counter = FlopCounterMode(display=False)
        with counter:  # counted on the eager model: compiling does not change the FLOPs
            step(name, eager=True)
        flops[name] = counter.get_total_flops()
    for _ in range(warmup):
        for name in SIDES:
            timed(name)
    times = _interleaved(timed, SIDES, repeats)
    result = {"preset": preset, "batch": batch, "resolution": resolution, "tokens": tokens, "device": str(device),
              "dtype": dtype, "compile": compile, "channels_last": channels_last, "repeats": repeats,
              "warmup": warmup}
    for name in SIDES:
        median = statistics.median(times[name])
        result[name] = {"median_s": median, "min_s": min(times[name]), "images_per_s": batch / median,
                        "gflop_per_step": flops[name] / 1e9, "parameters": count(models[name])}
    return result


def sampling_throughput(preset: str = "tiny", batch: int = 8, device: str = "cpu", repeats: int = 5) -> dict:
    """Forward-only images/s of both networks, float32 NCHW ("fp32") and bf16 autocast + channels-last ("bf16"),
    all four interleaved: {mode: {"ours": rate, "diffusers": rate}}."""
    device = torch.device(device)
    cfg = network_preset(preset, token_dim=1280, pooled_dim=1280)
    calls = {}
    for mode in ("fp32", "bf16"):
        fast = mode == "bf16"
        layout = torch.channels_last if fast else torch.contiguous_format
        models, forwards = _pair(cfg, device, layout, _inputs(cfg, batch, cfg.resolution, 49, device, layout))
        for name in SIDES:
            def call(model=models[name].eval(), forward=forwards[name], fast=fast):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
                    return forward(model)
            calls[(mode, name)] = call

    def timed(key) -> float:
        _sync(device)
        start = time.perf_counter()
        calls[key]()
        _sync(device)
        return time.perf_counter() - start

    with torch.no_grad():
        for call in calls.values():
            call()  # warm-up
        times = _interleaved(timed, list(calls), repeats)
    return {mode: {name: batch / statistics.median(times[(mode, name)]) for name in SIDES} for mode in ("fp32", "bf16")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs, both models")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, default=None, help="default: the preset's")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=49, help="condition length (49 = a 7x7 grid)")
    parser.add_argument("--token-dim", type=int, default=1280)
    parser.add_argument("--pooled-dim", type=int, default=1280)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak for MFU (H100/H200 dense bf16)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = train_throughput(args.preset, args.batch, args.device, args.dtype, args.compile, args.channels_last,
                         args.resolution, args.tokens, args.token_dim, args.pooled_dim, args.warmup, args.repeats)
    device = torch.device(args.device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}, compile {args.compile}, "
          f"channels_last {args.channels_last}")
    print(f"preset {args.preset}: batch {args.batch}, {r['resolution']}x{r['resolution']}, tokens {args.tokens}x"
          f"{args.token_dim}, pooled {args.pooled_dim}, {args.repeats} timed steps after {args.warmup} warm-up "
          f"(interleaved)")
    n_ours, n_theirs = r["ours"]["parameters"], r["diffusers"]["parameters"]
    print(f"parameters: ours {n_ours / 1e6:.3f}M, diffusers {n_theirs / 1e6:.3f}M (ours/diffusers "
          f"{n_ours / n_theirs:.3f})")
    if abs(n_ours / n_theirs - 1) > 0.1:
        print("WARNING: parameter counts differ by more than 10%")
    print(f"{'model':<10} {'median s/step':>14} {'min s/step':>11} {'images/s':>10} {'GFLOP/step':>11}"
          + (f" {'MFU':>7}" if device.type == "cuda" else ""))
    for name in SIDES:
        s = r[name]
        line = (f"{name:<10} {s['median_s']:>14.4f} {s['min_s']:>11.4f} {s['images_per_s']:>10.1f} "
                f"{s['gflop_per_step']:>11.2f}")
        if device.type == "cuda":
            line += f" {s['gflop_per_step'] * 1e9 / s['median_s'] / (args.peak_tflops * 1e12):>7.1%}"
        print(line)
    print(f"throughput ratio ours/diffusers: {r['ours']['images_per_s'] / r['diffusers']['images_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
