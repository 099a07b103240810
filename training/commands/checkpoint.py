"""`semantica checkpoint info`: what a model checkpoint holds, read from its metadata only."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("checkpoint", help="inspect model checkpoints")
    commands = parser.add_subparsers(dest="checkpoint_command", required=True)
    info = commands.add_parser("info", help="print a checkpoint's kind, configs, encoder and training info")
    info.add_argument("file")
    info.set_defaults(func=run_info)


def run_info(args) -> None:
    from semantica_core.checkpoint import read_checkpoint_metadata

    print(json.dumps(read_checkpoint_metadata(args.file), indent=2))
