"""`python -m peftkit.compat install|uninstall|status [--site-dir DIR]`: the environment-wide alias.

`install` writes `peftkit_peft_alias.pth` into site-packages (or `--site-dir`). At interpreter start,
Python's `site` module runs its one line, which loads `peftkit/compat/_alias.py` by path (standard
library only, no torch import) and installs the alias unless `PEFTKIT_PEFT_ALIAS=0`.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig

PTH_NAME = "peftkit_peft_alias.pth"
# One line, run by `site` (lines starting with "import" are executed). It finds peftkit without importing
# it and loads the alias module under its own name, so that `peftkit.compat` later finds the same module.
PTH_LINE = (
    "import importlib.util as _u, sys as _s; _p = _u.find_spec('peftkit'); "
    "_f = _p and _p.origin and _u.spec_from_file_location('peftkit.compat._alias', "
    "__import__('os').path.join(__import__('os').path.dirname(_p.origin), 'compat', '_alias.py')); "
    "_m = _f and _u.module_from_spec(_f); "
    "_m and (_s.modules.setdefault('peftkit.compat._alias', _m), _f.loader.exec_module(_m), _m.install_from_pth())\n"
)


def pth_path(site_dir: str | None = None) -> str:
    return os.path.join(site_dir or sysconfig.get_paths()["purelib"], PTH_NAME)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftkit.compat", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install", "uninstall", "status"])
    parser.add_argument("--site-dir", help="the site-packages folder (default: this interpreter's)")
    args = parser.parse_args(argv)
    path = pth_path(args.site_dir)
    if args.action == "install":
        from ._alias import real_peft_location

        location = real_peft_location()
        if location is not None:
            print(
                f"Not installed: the real `peft` is importable ({location}). Uninstall it first "
                "(`pip uninstall peft`); peftkit never shadows an installed PEFT.",
                file=sys.stderr,
            )
            return 1
        with open(path, "w", encoding="utf-8") as f:
            f.write(PTH_LINE)
        print(f"Installed the `peft` alias for this environment: {path}")
    elif args.action == "uninstall":
        if os.path.exists(path):
            os.remove(path)
            print(f"Removed {path}")
        else:
            print(f"Not installed ({path} does not exist)")
    else:
        from ._alias import is_installed

        print(f"environment-wide alias: {'installed' if os.path.exists(path) else 'not installed'} ({path})")
        print(f"active in this process: {is_installed()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
