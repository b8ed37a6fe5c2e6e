"""The package's floors hold: no import cycle, no import that goes up a floor, few imports inside
functions (see tests/import_graph.py, which prints the whole picture: `python tests/import_graph.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import import_graph

# Imports inside library functions that are neither optional extras nor deferred dependencies: none. An
# import goes at module level; if that makes a cycle, the module is on the wrong floor.
LOCAL_IMPORT_BUDGET = 0


@pytest.fixture(scope="module")
def result() -> dict[str, list]:
    return import_graph.report(import_graph.load())


def test_no_import_cycle_at_run_time(result):
    assert result["cycles"] == [], f"import cycles: {result['cycles']}"


def test_no_import_goes_up_a_floor(result):
    assert result["upward"] == [], "\n".join(result["upward"])


def test_no_cycle_through_function_imports(result):
    assert result["cycles_with_local"] == [], (
        f"cycles through imports inside functions: {result['cycles_with_local']}"
    )


def test_imports_inside_functions_stay_within_budget(result):
    assert len(result["local"]) <= LOCAL_IMPORT_BUDGET, "\n".join(result["local"])


# A method imports another only where it truly builds on it.
BUILDS_ON = {
    ("adalora", "lora"),  # AdaLoRA is LoRA with an SVD-shaped, pruned rank
    ("multitask_prompt_tuning", "prompt_tuning"),  # a shared prompt-tuning prompt, scaled per task
    ("lora", "trainable_tokens"),  # LoraConfig(trainable_token_indices=...)
    ("xlora", "lora"),  # X-LoRA mixes LoRA experts, held in a LoraModel
}


def test_a_method_imports_another_only_where_it_builds_on_it():
    assert import_graph.method_imports(import_graph.load()) <= BUILDS_ON


def test_every_module_is_on_a_floor():
    for name in import_graph.load():
        import_graph.floor_of(name)  # raises KeyError naming the module otherwise


def _module(name: str, runtime: list[str] = (), local: list[str] = ()) -> import_graph.Module:
    module = import_graph.Module(name, Path(import_graph.SRC, *name.split(".")).with_suffix(".py"), False)
    module.runtime = [(t, 1) for t in runtime]
    module.local = [(t, 1) for t in local]
    return module


def test_the_checker_finds_cycles_and_upward_imports():
    modules = {
        "peftkit.utils.a": _module("peftkit.utils.a", runtime=["peftkit.peft_model"]),
        "peftkit.peft_model": _module("peftkit.peft_model", local=["peftkit.utils.a"]),
        "peftkit.config": _module("peftkit.config", runtime=["peftkit.utils.a"]),
    }
    assert import_graph.cycles(modules) == []
    assert import_graph.cycles(modules, with_local=True) == [["peftkit.peft_model", "peftkit.utils.a"]]
    assert (
        len(import_graph.upward(modules)) == 1
        and "peftkit.utils.a (ground)" in import_graph.upward(modules)[0]
    )


def test_import_peftkit_loads_neither_transformers_nor_the_hub_client():
    code = (
        "import sys, peftkit\n"
        "loaded = [m for m in ('transformers', 'huggingface_hub.file_download', 'huggingface_hub.hf_api') "
        "if m in sys.modules]\n"
        "print(','.join(loaded))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"`import peftkit` loaded {out}"
