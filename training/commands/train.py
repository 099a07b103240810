"""`semantica train pairs`: train a pair-conditioned model (see training/train_pairs.py).

Under several processes: `accelerate launch [--num_processes N] -m training.cli train pairs ...`
(or `-m training.train_pairs ...`); FSDP/DeepSpeed and multi-node come from accelerate's own config.
This module owns the `train` group; other modules (commands/single.py) add their kinds to it, in either order.
"""
from __future__ import annotations

import argparse


def _train_kinds(subparsers):
    """The `train` group's subparsers, creating the group unless another module registered it first."""
    group = subparsers.choices.get("train")
    if group is None:
        group = subparsers.add_parser("train", help="train a model")
        return group.add_subparsers(dest="train_kind", required=True, metavar="KIND")
    for action in group._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return group.add_subparsers(dest="train_kind", required=True, metavar="KIND")


def register(subparsers) -> None:
    from training import train_pairs

    pairs = _train_kinds(subparsers).add_parser(
        "pairs",
        help="pair-conditioned model (Semantica) on pages of related images",
        description=train_pairs.__doc__.split("\n\n")[0],
    )
    train_pairs.add_arguments(pairs)
    pairs.set_defaults(func=train_pairs.run)
