"""The shared method tests: every file that declares them keeps them all, and a declaration that selects
nothing is a clear error (pytest would otherwise skip the empty parametrization)."""

import importlib
from pathlib import Path

import pytest
from tests.conftest import tiny_llama
from tests.tuners.method_checks import Case, shared_tests

HERE = Path(__file__).parent
DECLARING = sorted(
    p.stem
    for p in HERE.glob("test_*.py")
    if p.name != Path(__file__).name and "shared_tests(" in p.read_text()
)


def test_the_method_files_declare_the_shared_tests():
    assert len(DECLARING) >= 30, DECLARING


@pytest.mark.parametrize("name", DECLARING)
def test_no_test_of_a_method_file_hides_a_shared_one(name):
    module = importlib.import_module(name)
    for test in module.SHARED_TESTS:
        function = getattr(module, test)
        assert function.__module__ == shared_tests.__module__, (
            f"{name}.py defines its own {test}, which replaces the shared test of that name: rename it, "
            "or leave the shared one out of the declaration (None)"
        )


def test_a_selection_of_no_case_is_a_clear_error():
    cases = {"llama": Case(tiny_llama, {})}
    with pytest.raises(ValueError, match="selects no case"):
        shared_tests("LoraConfig", cases, one="llama", merge={})
    tests = shared_tests("LoraConfig", cases, one="llama", bf16=None, default_targets="X")
    assert "test_bf16_base_equals_peft" not in tests
    assert tests["SHARED_TESTS"] == tuple(name for name in tests if name.startswith("test_"))
