"""The argument parser's manners: one-line errors that name the fix, and every default in the help.

argparse prints the whole usage before an error; for a mistyped flag we print one line naming the
closest flag instead (`unknown flag --learning-rte; did you mean --learning-rate?`).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import NoReturn

_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (subcommand parsers are made of this class too)."""

    def error(self, message: str) -> NoReturn:
        match = _CHOICE.search(message)
        if match:
            choices = re.findall(r"'([^']*)'", match.group(2)) or [
                c.strip() for c in match.group(2).split(",")
            ]
            close = difflib.get_close_matches(match.group(1), choices, n=1)
            message += f"; did you mean '{close[0]}'?" if close else ""
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every long flag the parser accepts."""
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def unknown_arguments_message(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """One line about arguments `parser` does not know, naming the closest flag for the first one."""
    first = extras[0]
    if not first.startswith("-"):
        return f"unexpected argument {first!r} (see {parser.prog} --help)"
    flag = first.split("=", 1)[0]
    close = difflib.get_close_matches(flag, option_strings(parser), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f" (see {parser.prog} --help)"
    more = f" (and {len(extras) - 1} more unknown argument(s))" if len(extras) > 1 else ""
    return f"unknown flag {flag}{hint}{more}"


def unknown_flags(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[argparse.ArgumentParser, list[str]]:
    """(the subcommand's parser, the `--flags` in `argv` it does not know), found before parsing, so a
    mistyped flag is named even when it also hides a required one (`--ouput-dir`)."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((arg for arg in argv if arg in subparsers.choices), None)
    if command is None:
        return parser, []
    sub = subparsers.choices[command]
    known = option_strings(sub)
    rest = argv[argv.index(command) + 1 :]
    # a unique prefix of a flag is that flag (argparse's abbreviations)
    return sub, [
        a for a in rest if a.startswith("--") and not any(k.startswith(a.split("=", 1)[0]) for k in known)
    ]


def _needs_default(action: argparse.Action) -> bool:
    if not action.option_strings or action.help in (None, argparse.SUPPRESS) or action.required:
        return False
    if action.nargs == 0:  # switches (store_true, help): off unless given
        return False
    return action.default not in (None, argparse.SUPPRESS) and "default" not in action.help


def document_defaults(parser: argparse.ArgumentParser) -> None:
    """Append `(default: X)` to the help of every flag that has a default its help does not state, in
    `parser` and its subcommands. (Flags without a default say in their own help what happens.)"""
    for action in parser._actions:
        if _needs_default(action):
            action.help = f"{action.help} (default: %(default)s)"
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                document_defaults(sub)
