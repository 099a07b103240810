"""`semantica init`: an untrained pair-conditioned checkpoint whose condition dims match an encoder file."""
from __future__ import annotations

from training.options import add_output, require_output


def register(subparsers) -> None:
    parser = subparsers.add_parser("init", help="create an untrained pair-conditioned checkpoint for an encoder")
    parser.add_argument("--encoder", required=True, help="encoder file (from `semantica encoder export`)")
    parser.add_argument("--preset", required=True, help="network preset (e.g. tiny, base64, base256)")
    add_output(parser, "the checkpoint (.safetensors)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights (default 0)")
    parser.set_defaults(func=run)


def run(args) -> None:
    import torch

    from semantica_core.checkpoint import save_checkpoint
    from semantica_core.encoders import read_encoder_spec
    from semantica_core.networks import build_network
    from semantica_core.presets import default_diffusion_config, network_preset

    output = require_output(args)
    spec = read_encoder_spec(args.encoder)
    network_config = network_preset(args.preset, token_dim=spec.token_dim, pooled_dim=spec.pooled_dim)
    network_config = network_config.to_dict()
    diffusion_config = default_diffusion_config(args.preset, resolution=network_config.get("resolution"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        network = build_network("pair_conditioned", network_config)
    save_checkpoint(
        output,
        kind="pair_conditioned",
        network_config=network_config,
        diffusion_config=diffusion_config,
        state_dict=network.state_dict(),
        encoder_info=spec.info(),
        training_info={"step": 0, "seed": args.seed, "preset": args.preset, "encoder_source": spec.source},
    )
    params = sum(p.numel() for p in network.parameters())
    print(f"wrote {output}: untrained {args.preset} ({params / 1e6:.1f}M parameters) for encoder {spec.encoder_id}")
