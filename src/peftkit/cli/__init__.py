"""The `peftkit` command line: train, generate, merge, info, diff, export, import, serve and demo (one
module per subcommand).

Heavy libraries (torch, transformers) are imported inside the subcommands, so `peftkit --help` is quick.
Bad input ends the command with exit status 2 and a one-line message that names the problem and the fix.
"""

from __future__ import annotations

import argparse
import sys

from .errors import CliError
from .parser import CliParser, document_defaults, unknown_arguments_message, unknown_flags

__all__ = ["CliError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from . import demo, diff, export, generate, importer, info, merge, serve, train

    parser = CliParser(
        prog="peftkit",
        description="Parameter-efficient fine-tuning from the command line (a drop-in for Hugging Face PEFT).",
    )
    parser.add_argument("--threads", type=int, help="CPU threads torch may use (default: torch's choice)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (train, generate, merge, info, diff, export, importer, serve, demo):
        module.register(subparsers)
    document_defaults(parser)
    return parser


def _subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    sub, unknown = unknown_flags(parser, argv)
    if unknown and "-h" not in argv and "--help" not in argv:
        print(f"{sub.prog}: error: {unknown_arguments_message(sub, unknown)}", file=sys.stderr)
        return 2
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = _subcommand_parser(parser, args.command)
        print(f"{sub.prog}: error: {unknown_arguments_message(sub, extras)}", file=sys.stderr)
        return 2
    args.argv = argv  # e.g. to print the command that resumes
    try:
        if args.threads is not None:
            if args.threads <= 0:
                raise CliError(f"--threads must be a positive integer, got {args.threads}.")
            import torch

            torch.set_num_threads(args.threads)
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"peftkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npeftkit {args.command}: interrupted", file=sys.stderr)
        return 130
