"""The `semantica` command line: encoder export, init, checkpoint inspection, and (added by their modules) training,
embedding, evaluation and benchmarks. Each command group lives in its own module under training/commands/."""
from __future__ import annotations

import argparse
import importlib
import sys

# One module per command group; each exposes register(subparsers) (see training/commands/__init__.py).
COMMAND_MODULES = [
    "training.commands.encoder",
    "training.commands.init",
    "training.commands.checkpoint",
    "training.commands.train",
    "training.commands.single",
    "training.commands.embed",
    "training.commands.eval_variations",
    "training.commands.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semantica", description="Semantica: image variations, SDEdit and SinDiffusion models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:  # user errors: the message says what to do
        print(f"semantica: error: {e}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
