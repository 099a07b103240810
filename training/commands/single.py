"""`semantica train single` and `semantica eval single`: SinDiffusion models trained on one image.

The `train` and `eval` groups may belong to other modules (training/commands/train.py owns `train`): `register`
adds `single` to a group that is already registered and creates the group otherwise, so list this module after
theirs in COMMAND_MODULES. `add_train_single(kinds)` / `add_eval_single(kinds)` do the same for a group's own
subparsers object.
"""
from __future__ import annotations

import argparse

from training.commands import group_kinds


def add_train_single(kinds) -> None:
    from training import train_single

    parser = kinds.add_parser(
        "single", help="SinDiffusion model on one image", description=train_single.__doc__.split("\n\n")[0]
    )
    train_single.add_arguments(parser)
    parser.set_defaults(func=train_single.run)


def add_eval_single(kinds) -> None:
    from training import eval_single

    parser = kinds.add_parser(
        "single", help="SIFID and diversity of SinDiffusion models", description=eval_single.__doc__.split("\n\n")[0]
    )
    eval_single.add_arguments(parser)
    parser.set_defaults(func=eval_single.run)


def register(subparsers) -> None:
    add_train_single(group_kinds(subparsers, "train", "train a model", "train_kind"))
    add_eval_single(group_kinds(subparsers, "eval", "evaluate models", "eval_kind"))
