"""The `semantica` command line: encoder export, init, checkpoint inspection, and (added by their modules) training,
embedding, evaluation and benchmarks. Each command group lives in its own module under training/commands/.

Exit status, the same for every sub-command (README, "Exit status"): 0 done; 2 the command could not do what was
asked for a reason the user can fix (bad arguments or config, a missing, unreadable or corrupt file, a full disk, a
read-only folder, too little memory, a folder in use by another run), with one line on stderr that says what failed
and what to do; 130 stopped by Ctrl-C; 1 an unexpected error (a bug: the traceback is printed).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from typing import Callable

EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

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

# What to do about a failed file operation, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "free some space there or choose a folder on another disk; files written before are kept",
    errno.EDQUOT: "your disk quota is used up: free some space or choose another folder; files written before are kept",
    errno.EROFS: "that file system is read-only: choose a folder you can write to",
    errno.EACCES: "check the permissions of the file and its folder, or choose another path",
    errno.EPERM: "check the permissions of the file and its folder, or choose another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "that is a folder: give a file",
}


def describe_os_error(error: OSError) -> str:
    """One line for a failed file operation: what failed, on which path, what to do."""
    path = error.filename
    if path is not None and os.path.basename(str(path)).startswith(".") and str(path).endswith(".tmp"):
        path = os.path.dirname(str(path))  # a temporary file of an atomic write: name the folder it was going to
    what = error.strerror or str(error)
    where = f" ({path})" if path is not None else ""
    advice = _OS_ADVICE.get(error.errno)
    return f"{what}{where}" + (f"; {advice}" if advice else "")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is written for the user (they end with exit status 2, without a traceback)."""
    from training.data import DataError

    return (ValueError, KeyError, DataError)


def exit_status(command: Callable[[], int | None], prog: str = "semantica") -> int:
    """Runs a command and turns how it ended into the exit status of the convention above."""
    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:
        print(f"{prog}: error: {describe_os_error(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except user_errors() as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semantica", description="Semantica: image variations, SDEdit and SinDiffusion models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # argparse exits with 2 on bad arguments, as the convention says
    return exit_status(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
