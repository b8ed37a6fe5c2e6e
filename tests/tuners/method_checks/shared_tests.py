"""One declaration of the tests every method's file shares, parametrized over the method's cases.

A method's test file states its cases and which of them each shared test runs on, and adds the tests
it returns to the module (its own tests follow in the file):

    CASES = {"llama_q_v": Case(tiny_llama, {...}), ...}
    globals().update(shared_tests("FourierFTConfig", CASES, one="llama_q_v", merge=NO_BIAS))

Each test is parametrized over the cases it runs on, with the case names as ids
(`test_merge_unmerge_disable[llama_q_v]`). A selection is a case name, a list of names, a dict of cases
(a subset, or cases of that test only), `ALL` (every case) or `ONE` (the `one` case); `None` leaves the
test out (the method tests that property its own way, or it does not apply).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import pytest

from . import against_peft, peftkit_only
from .cases import Case

ALL = "<every case>"
ONE = "<the one case>"
Selection = str | Sequence[str] | Mapping[str, Case] | None


def _select(cases: Mapping[str, Case], which: Selection, one: str) -> dict[str, Case]:
    if which == ALL:
        selected = dict(cases)
    elif which == ONE:
        selected = {one: cases[one]}
    elif isinstance(which, str):
        selected = {which: cases[which]}
    elif isinstance(which, Mapping):
        selected = dict(which)
    else:
        selected = {name: cases[name] for name in which}
    if not selected:  # pytest would skip an empty parametrization: say so instead
        raise ValueError("a shared test selects no case: give None to leave it out")
    return selected


def _over_cases(name: str, selected: dict[str, Case], test: Callable) -> Callable:
    test.__name__ = test.__qualname__ = name
    return pytest.mark.parametrize("case", list(selected.values()), ids=list(selected))(test)


def shared_tests(
    method: str,
    cases: Mapping[str, Case],
    *,
    one: str,
    files: Selection = ALL,
    same_files: Selection = ALL,
    merge: Selection = ALL,
    training: Selection = ONE,
    training_lr: float = 1e-2,
    training_steps: int = 5,
    no_match: Selection = ONE,
    no_weighted: Selection = ONE,
    bf16: Selection = ONE,
    mixed_batch: Selection = ONE,
    low_cpu_mem_usage: Selection = ONE,
    gradients: Selection = None,
    merged_as_peft: Selection = None,
    several_adapters: Selection = None,
    truncated_file: Selection = None,
    default_targets: str | Sequence[str] | None = None,
    config_fields: bool = True,
) -> dict[str, object]:
    """The shared tests of config class `method` (its name in both libraries) over `cases`, by test name,
    and `SHARED_TESTS`, their names (tests/tuners/test_method_checks.py checks that no test of the file
    hides one). `one` is the case of the tests that run on one case unless told otherwise."""
    tests: dict[str, Callable] = {}

    def declare(name: str, which: Selection, check: Callable, with_folder: bool = False) -> None:
        if which is None:
            return
        selected = _select(cases, which, one)
        if with_folder:

            def test(case, tmp_path):
                check(method, case, str(tmp_path))
        else:

            def test(case):
                check(method, case)

        test.__doc__ = getattr(check, "func", check).__doc__  # a partial's: its function's
        tests[name] = _over_cases(name, selected, test)

    declare("test_peft_file_loads_in_peftkit", files, against_peft.check_peft_file_loads_in_peftkit, True)
    declare("test_peftkit_file_loads_in_peft", files, against_peft.check_peftkit_file_loads_in_peft, True)
    declare("test_same_files_and_names_as_peft", same_files, against_peft.check_same_files_and_names, True)
    declare("test_merge_unmerge_disable", merge, peftkit_only.check_merge_unmerge_disable)
    train = partial(peftkit_only.check_training_lowers_loss, steps=training_steps, lr=training_lr)
    declare("test_training_lowers_loss", training, train)
    declare("test_target_matching_nothing_is_a_clear_error", no_match, peftkit_only.check_no_match_error)
    declare("test_no_weighted_adapter", no_weighted, peftkit_only.check_no_weighted_adapter)
    declare("test_bf16_base_equals_peft", bf16, against_peft.check_bf16_equals_peft)
    declare("test_mixed_batch_gives_each_sample_its_adapter", mixed_batch, peftkit_only.check_mixed_batch)
    declare("test_low_cpu_mem_usage_load", low_cpu_mem_usage, peftkit_only.check_low_cpu_mem_usage_load, True)
    declare("test_gradients_equal_peft", gradients, against_peft.check_gradients_equal_peft)
    declare("test_merged_equals_peft", merged_as_peft, against_peft.check_merged_equals_peft)
    declare(
        "test_several_adapters_set_and_delete_as_peft",
        several_adapters,
        against_peft.check_several_adapters_equal_peft,
    )
    declare(
        "test_truncated_file_is_a_clear_error",
        truncated_file,
        peftkit_only.check_truncated_file_is_a_clear_error,
        True,
    )
    if default_targets is not None:
        names = (default_targets,) if isinstance(default_targets, str) else tuple(default_targets)

        def test_default_targets_per_architecture_are_peft_s():
            against_peft.check_default_targets(*names)

        tests[test_default_targets_per_architecture_are_peft_s.__name__] = (
            test_default_targets_per_architecture_are_peft_s
        )
    if config_fields:

        def test_config_fields_and_defaults_are_peft_s():
            against_peft.check_config_fields(method)

        tests[test_config_fields_and_defaults_are_peft_s.__name__] = (
            test_config_fields_and_defaults_are_peft_s
        )
    return {**tests, "SHARED_TESTS": tuple(tests)}
