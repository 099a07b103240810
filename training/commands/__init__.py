"""Subcommands of the `semantica` CLI, one module per command group.

A command module exposes `register(subparsers)`: it adds its parser(s) to the argparse subparsers and sets
`func=handler` on each leaf parser (`parser.set_defaults(func=handler)`); `handler(args)` returns an exit code or
None for success. Heavy imports (torch models, accelerate) go inside the handlers so `semantica --help` stays fast.
Add a new module to COMMAND_MODULES in training/cli.py to wire it in.
"""
