"""An opt-in drop-in alias: peftkit importable as `peft`, for code and libraries written for PEFT
(transformers' adapter methods and Trainer, TRL, accelerate).

In one process, before transformers/TRL are imported::

    >>> import peftkit.compat
    >>> peftkit.compat.install_peft_alias()
    >>> import peft  # now peftkit; peft.__version__ == "0.22.0+peftkit.<version>"

For a whole environment (a `.pth` file in site-packages installs it at every interpreter start; set
`PEFTKIT_PEFT_ALIAS=0` to keep it off for one process)::

    python -m peftkit.compat install     # or: uninstall, status

The alias refuses to install while the real `peft` is importable: it never shadows an installed PEFT.
"""

from __future__ import annotations

from ._alias import (
    ENV_SWITCH,
    PEFT_COMPAT_VERSION,
    PeftAliasError,
    PeftAliasFinder,
    alias_version,
    is_installed,
    real_peft_location,
)
from ._alias import install as _install
from ._alias import uninstall as _uninstall

__all__ = [
    "ENV_SWITCH",
    "PEFT_COMPAT_VERSION",
    "PeftAliasError",
    "PeftAliasFinder",
    "alias_version",
    "install_peft_alias",
    "is_peft_alias_installed",
    "real_peft_location",
    "uninstall_peft_alias",
]


def install_peft_alias() -> None:
    """Make `import peft` (and `import peft.<sub>`) give peftkit in this process, and
    `importlib.metadata.version("peft")` report the PEFT version peftkit follows.

    Call it before importing transformers' Trainer or TRL (they bind `peft` names at import time).
    Raises `PeftAliasError` when the real `peft` is importable or transformers has already concluded
    that there is none. Installing twice is harmless.
    """
    _install()


def uninstall_peft_alias() -> None:
    """Remove the alias from this process (modules already holding `peft` objects keep them)."""
    _uninstall()


def is_peft_alias_installed() -> bool:
    """Whether the alias is active in this process."""
    return is_installed()
