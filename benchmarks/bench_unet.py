"""Training throughput of PairConditionedUNet against diffusers' UNet2DConditionModel of the same size.

Both networks get the same batch, resolution and token sequence and run in the same training loop: one step is
forward, backward of a mean-square loss, gradient clipping and an AdamW update, as in `semantica train pairs`. Warm-up and timed steps alternate between the two models so that clock and thermal drift hit both alike.

    python benchmarks/bench_unet.py --device cpu --preset tiny --batch 8
    python benchmarks/bench_unet.py --device cuda --dtype bf16 --compile --preset base64 --batch 64
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semantica_core.networks import PairConditionedUNet, UNetConfig  # noqa: E402
from semantica_core.presets import network_preset  # noqa: E402


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


def main() -> None:
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
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = network_preset(args.preset, token_dim=args.token_dim, pooled_dim=args.pooled_dim)
    if not isinstance(cfg, UNetConfig):
        parser.error(f"--preset {args.preset} is not a pair-conditioned preset")
    resolution = args.resolution or cfg.resolution
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    ours = PairConditionedUNet(cfg).to(device, memory_format=memory_format).train()
    theirs = diffusers_twin(cfg).to(device, memory_format=memory_format).train()
    n_ours, n_theirs = count(ours), count(theirs)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, cfg.in_channels, resolution, resolution, generator=g)
    x = x.to(device).contiguous(memory_format=memory_format)
    c_noise = (torch.rand(args.batch, generator=g) * 999).to(device)
    tokens = torch.randn(args.batch, args.tokens, args.token_dim, generator=g).to(device)
    pooled = torch.randn(args.batch, args.pooled_dim, generator=g).to(device)

    models = {"ours": ours, "diffusers": theirs}
    calls = {  # the eager forward of each model on the shared inputs
        "ours": lambda m: m(x, c_noise, tokens, pooled),
        "diffusers": lambda m: m(x, c_noise, encoder_hidden_states=tokens, class_labels=pooled).sample,
    }
    runners = {name: torch.compile(m) if args.compile else m for name, m in models.items()}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

    def step(name: str, eager: bool = False) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            out = calls[name](models[name] if eager else runners[name])
        out.float().square().mean().backward()
        torch.nn.utils.clip_grad_norm_(models[name].parameters(), 1.0)
        optimizers[name].step()

    def timed(name: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(name)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    flops = {}
    for name in models:
        counter = FlopCounterMode(display=False)
        with counter:  # counted on the eager model: compiling does not change the FLOPs
            step(name, eager=True)
        flops[name] = counter.get_total_flops()

    for _ in range(args.warmup):
        for name in models:
            timed(name)
    times = {name: [] for name in models}
    for i in range(args.repeats):
        for name in list(models) if i % 2 == 0 else list(models)[::-1]:  # alternate who goes first
            times[name].append(timed(name))

    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}, compile {args.compile}, "
          f"channels_last {args.channels_last}")
    print(f"preset {args.preset}: batch {args.batch}, {resolution}x{resolution}, "
          f"tokens {args.tokens}x{args.token_dim}, pooled {args.pooled_dim}, {args.repeats} timed steps after {args.warmup} warm-up (interleaved)")
    print(f"parameters: ours {n_ours / 1e6:.3f}M, diffusers {n_theirs / 1e6:.3f}M "
          f"(ours/diffusers {n_ours / n_theirs:.3f})")
    if abs(n_ours / n_theirs - 1) > 0.1:
        print("WARNING: parameter counts differ by more than 10%")
    header = f"{'model':<10} {'median s/step':>14} {'min s/step':>11} {'images/s':>10} {'GFLOP/step':>11}"
    if device.type == "cuda":
        header += f" {'MFU':>7}"
    print(header)
    rate = {}
    for name in ("ours", "diffusers"):
        median = statistics.median(times[name])
        rate[name] = args.batch / median
        line = (f"{name:<10} {median:>14.4f} {min(times[name]):>11.4f} {rate[name]:>10.1f} "
                f"{flops[name] / 1e9:>11.2f}")
        if device.type == "cuda":
            line += f" {flops[name] / median / (args.peak_tflops * 1e12):>7.1%}"
        print(line)
    print(f"throughput ratio ours/diffusers: {rate['ours'] / rate['diffusers']:.3f}")


if __name__ == "__main__":
    main()
