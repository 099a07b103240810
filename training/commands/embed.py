"""`semantica embed`: precompute a frozen encoder's embeddings of a page data set into a cache folder.

Shardable: `--shard i --num-shards n` (or, under `accelerate launch`/`torchrun`, one shard per process). Training
reads the cache with `semantica train pairs --cache DIR`.
"""
from __future__ import annotations

import os


def register(subparsers) -> None:
    parser = subparsers.add_parser("embed", help="precompute encoder embeddings of a data set (a cache for training)")
    parser.add_argument("--data", required=True, help="folder of page folders, .jsonl/.csv manifest, or tar shards")
    parser.add_argument("--data-format", default="auto", choices=["auto", "folder", "jsonl", "csv", "tar"])
    parser.add_argument("--tar-page-from", default="key", choices=["key", "dir"])
    parser.add_argument("--encoder", required=True, help="encoder file (from `semantica encoder export`)")
    parser.add_argument("--output", required=True, help="cache folder (shards of one cache share it)")
    parser.add_argument("--shard", type=int, default=None, help="this process's shard (default: RANK or 0)")
    parser.add_argument("--num-shards", type=int, default=None, help="number of shards (default: WORLD_SIZE or 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2, help="image decoding worker processes")
    parser.add_argument("--device", default=None, help="auto (default: cuda:LOCAL_RANK when available, else cpu), "
                        "cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                        help="storage dtype of the embeddings")
    parser.add_argument("--min-image-size", type=int, default=32, help="skip images with a shorter side below this")
    parser.add_argument("--images-per-file", type=int, default=50_000)
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from semantica_core.encoders import load_encoder
    from training.data import embed_dataset, open_source
    from training.options import resolve_device

    shard = args.shard if args.shard is not None else int(os.environ.get("RANK", 0))
    num_shards = args.num_shards if args.num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
    device = args.device
    if device in (None, "auto"):  # one process per GPU under torchrun / accelerate launch
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    device = resolve_device(device)
    source = open_source(args.data, args.data_format, args.tar_page_from)
    encoder = load_encoder(args.encoder, device=device)
    embed_dataset(
        source, encoder, args.output, shard=shard, num_shards=num_shards, batch_size=args.batch_size,
        device=device, dtype=args.dtype, images_per_file=args.images_per_file, num_workers=args.num_workers,
        min_image_size=args.min_image_size,
    )
    return 0
