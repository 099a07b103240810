"""`semantica train pairs`: train a pair-conditioned model (see training/train_pairs.py).

Under several processes: `accelerate launch [--num_processes N] -m training.cli train pairs ...`
(or `-m training.train_pairs ...`); FSDP/DeepSpeed and multi-node come from accelerate's own config.
This module owns the `train` group; other modules (commands/single.py) add their kinds to it, in either order.
"""
from __future__ import annotations

import argparse

from training.commands import group_kinds


def register(subparsers) -> None:
    from training import train_pairs

    pairs = group_kinds(subparsers, "train", "train a model", "train_kind").add_parser(
        "pairs",
        help="pair-conditioned model (Semantica) on pages of related images",
        description=train_pairs.__doc__.split("\n\n")[0],
    )
    train_pairs.add_arguments(pairs)
    pairs.set_defaults(func=train_pairs.run)
