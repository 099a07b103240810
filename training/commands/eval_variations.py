"""`semantica eval variations`: consistency, diversity and few-shot Fréchet distance of variation models
(training/eval_variations.py).

The `eval` group is shared with `semantica eval single` (training/commands/single.py): whichever module is listed
first in COMMAND_MODULES creates the group and the other adds its sub-command to it.
"""
from __future__ import annotations


def add_eval_variations(kinds) -> None:
    from training import eval_variations

    parser = kinds.add_parser(
        "variations", help="consistency, diversity and few-shot FD of variation models",
        description=eval_variations.__doc__.split("\n\n")[0],
    )
    eval_variations.add_arguments(parser)
    parser.set_defaults(func=eval_variations.run)


def register(subparsers) -> None:
    from training.commands import group_kinds

    add_eval_variations(group_kinds(subparsers, "eval", "evaluate models", "eval_kind"))
