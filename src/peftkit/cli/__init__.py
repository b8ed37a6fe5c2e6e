"""The `peftkit` command line: train, generate, merge, info, serve and demo (one module per subcommand).

Heavy libraries (torch, transformers) are imported inside the subcommands, so `peftkit --help` is quick.
Bad input ends the command with exit status 2 and a message that names the problem and the fix.
"""

from __future__ import annotations

import argparse
import sys

from .errors import CliError

__all__ = ["CliError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from . import demo, generate, info, merge, serve, train

    parser = argparse.ArgumentParser(
        prog="peftkit",
        description="Parameter-efficient fine-tuning from the command line (a drop-in for Hugging Face PEFT).",
    )
    parser.add_argument("--threads", type=int, help="CPU threads torch may use (default: torch's choice)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (train, generate, merge, info, serve, demo):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
        print(f"peftkit {args.command}: interrupted", file=sys.stderr)
        return 130
