"""The error every subcommand raises for bad input; `main` prints it and exits with status 2."""

from __future__ import annotations


class CliError(Exception):
    """A problem with what the user passed (file, flag, data), with a message that says how to fix it."""


def missing_extra(package: str, extra: str, what: str) -> CliError:
    """The error for an optional dependency that is not installed.

    Args:
        package: the import name that failed (e.g. "matplotlib").
        extra: the peftkit extra that installs it (e.g. "plot").
        what: what needs it, for the message (e.g. "the loss plot").
    """
    return CliError(
        f"{what} needs the '{package}' package, which is not installed: pip install 'peftkit[{extra}]'"
    )
