"""Running Python where the real `peft` is not installed, for the `peft` alias tests.

The test environment has the real peft (the oracle), and the alias refuses to shadow it. So the alias
runs in a child interpreter started with `-S` (no site-packages) whose only site directory is a copy of
this environment's site-packages made of symlinks, without `peft` and its dist-info. `site.addsitedir`
processes the `.pth` files there exactly as interpreter start does (peftkit's editable install, and the
alias's own `.pth` when a test installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_site_without_peft(root: Path) -> Path:
    """`root/site-packages`: every entry of this environment's site-packages but the real peft.

    The folder must be named `site-packages`: datasets (through dill) pickles objects of modules outside
    such folders by value, which fails for pyarrow's types.
    """
    source = Path(sysconfig.get_paths()["purelib"])
    target = root / "site-packages"
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        name = entry.name
        if name == "peft" or (name.startswith("peft-") and name.endswith((".dist-info", ".egg-info"))):
            continue
        if name == "peftkit_peft_alias.pth":  # an environment-wide alias of this environment: not wanted here
            continue
        (target / name).symlink_to(entry)
    return target


def run_python(site: Path, code: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict:
    """Run `code` in a child interpreter seeing only `site`; it reports by calling `report(**values)`.

    Returns the reported values; a child that fails raises AssertionError with its output.
    """
    prelude = textwrap.dedent(
        f"""
        import json as _json, site as _site, sys as _sys
        _site.addsitedir({str(site)!r})
        _sys.path.insert(0, {str(REPO)!r})  # the tests package (fixtures)
        def report(**values):
            print("@@REPORT@@" + _json.dumps(values))
        """
    )
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PEFTKIT_"))}
    child_env.update({"PYTHONNOUSERSITE": "1", "TOKENIZERS_PARALLELISM": "false"})
    child_env.update(env or {})
    # a script file, not `-c`: libraries that hash functions (datasets) handle a `__main__` with a file
    script = site.parent / f"child_{abs(hash(code))}.py"
    script.write_text(prelude + textwrap.dedent(code), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-S", str(script)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=str(cwd or REPO),
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"child exited with {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}\n"
            f"--- stderr ---\n{result.stderr[-8000:]}"
        )
    reports = [line for line in result.stdout.splitlines() if line.startswith("@@REPORT@@")]
    assert reports, f"the child reported nothing\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    values: dict = {}
    for line in reports:
        values.update(json.loads(line[len("@@REPORT@@") :]))
    return values
