"""The flags every `semantica` sub-command spells the same way, and the old names kept as deprecated aliases.

  --output PATH                   where the results go (a file or a folder, as the command says)
  --device auto|cpu|cuda|cuda:N   auto: cuda when available, else cpu
  --precision auto|bf16|fp32      the network's forward (semantica_core.precision; SEMANTICA_PRECISION too)

An old name (--out, --output-dir, --cpu, --no-bf16, --mixed-precision) still works for one release and prints one
line on stderr naming the new one. Exit status: training/cli.py.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from semantica_core.precision import PRECISIONS

DEVICE_HELP = "auto (default: cuda when available, else cpu), cpu, cuda or cuda:N"
PRECISION_HELP = ("auto (default): bf16 autocast and channels-last where the CPU or GPU has native bf16, else "
                  "float32; fp32 switches it off (so does SEMANTICA_PRECISION=fp32)")


class DeprecatedAlias(argparse.Action):
    """An old flag name: stores into the new flag's `dest` (through `convert`) and says it is deprecated."""

    def __init__(self, option_strings, dest, new: str, convert: Optional[Callable] = None, **kwargs):
        self.new, self.convert = new, convert
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if self.nargs == 0 else values
        print(f"{parser.prog}: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        try:
            setattr(namespace, self.dest, self.convert(value) if self.convert else value)
        except ValueError as error:
            parser.error(f"{option_string}: {error}")  # exit status 2, as every bad argument


def add_output(parser: argparse.ArgumentParser, help: str, old: tuple[str, ...] = ("--out",), default=None) -> None:
    """--output (required unless `default` is given: checked by `require_output`, so an old name can stand in)."""
    parser.add_argument("--output", default=default, metavar="PATH",
                        help=help + ("" if default is not None else " (required)"))
    for name in old:
        parser.add_argument(name, dest="output", action=DeprecatedAlias, new="--output")


def require_output(args) -> str:
    if not getattr(args, "output", None):
        raise ValueError("--output is required: say where the results go")
    return args.output


def add_device(parser: argparse.ArgumentParser, cpu_alias: bool = False) -> None:
    parser.add_argument("--device", default=None, help=DEVICE_HELP)
    if cpu_alias:
        parser.add_argument("--cpu", dest="device", action=DeprecatedAlias, new="--device cpu", nargs=0, const="cpu")


def resolve_device(name: Optional[str]):
    """A torch.device from --device: auto/None is cuda when available, else cpu; an unusable choice is a user error."""
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use {DEVICE_HELP}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device here; use --device cpu (or auto)")
    return device


def _old_precision(value: str) -> str:
    value = value.strip().lower()
    if value == "no":
        return "fp32"
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {value!r}")
    return value


def add_precision(parser: argparse.ArgumentParser, old: tuple[str, ...] = ()) -> None:
    """--precision; `old` may hold "--no-bf16" (= fp32) and "--mixed-precision" (its values, no = fp32)."""
    parser.add_argument("--precision", default=None, choices=PRECISIONS, help=PRECISION_HELP)
    if "--no-bf16" in old:
        parser.add_argument("--no-bf16", dest="precision", action=DeprecatedAlias, new="--precision fp32", nargs=0,
                            const="fp32")
    if "--mixed-precision" in old:
        parser.add_argument("--mixed-precision", dest="precision", action=DeprecatedAlias, new="--precision",
                            convert=_old_precision)
