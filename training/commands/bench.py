"""`semantica bench`: the fast path against float32, UNet training and sampling throughput against diffusers, and
sampler evaluations against 1000-step DDPM, in one table (training/bench.py)."""
from __future__ import annotations


def register(subparsers) -> None:
    from training import bench

    parser = subparsers.add_parser("bench", help="performance side by side: precision, UNet vs diffusers, samplers",
                                   description=bench.__doc__.split("\n\n")[0])
    bench.add_arguments(parser)
    parser.set_defaults(func=bench.run)
