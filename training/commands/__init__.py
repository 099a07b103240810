"""Subcommands of the `semantica` CLI, one module per command group.

A command module exposes `register(subparsers)`: it adds its parser(s) to the argparse subparsers and sets
`func=handler` on each leaf parser (`parser.set_defaults(func=handler)`); `handler(args)` returns an exit code or
None for success. Heavy imports (torch models, accelerate) go inside the handlers so `semantica --help` stays fast.
Add a new module to COMMAND_MODULES in training/cli.py to wire it in.
"""

import argparse


def group_kinds(subparsers, name: str, help_text: str, dest: str):
    """The subparsers of command group `name` (e.g. `train`, `eval`), creating the group unless a module already did,
    so modules can add their kinds to a shared group in any order."""
    group = subparsers.choices.get(name)
    if group is None:
        group = subparsers.add_parser(name, help=help_text)
        return group.add_subparsers(dest=dest, required=True, metavar="KIND")
    for action in group._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return group.add_subparsers(dest=dest, required=True, metavar="KIND")
