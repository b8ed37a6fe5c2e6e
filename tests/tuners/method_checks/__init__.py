"""The checks every method's tests run against peft (the oracle), one function per property, and one
declaration of the tests they make (`shared_tests`).

- `cases`: a `Case` (a tiny base model, the config kwargs, inputs, how to read the output), the models
  both libraries build from it, and the tolerances;
- `against_peft`: files both ways, the same files and names, bf16, gradients, merged outputs, several
  adapters, config fields and default targets, compared with peft;
- `peftkit_only`: merge/unmerge/disable, training, clear errors, mixed batches, low_cpu_mem_usage loads;
- `shared_tests`: the block of tests a method's file declares in one call.
"""

from .against_peft import (
    check_bf16_equals_peft,
    check_config_fields,
    check_default_targets,
    check_gradients_equal_peft,
    check_merged_equals_peft,
    check_peft_file_loads_in_peftkit,
    check_peftkit_file_loads_in_peft,
    check_same_files_and_names,
    check_same_files_as_peft,
    check_second_adapter_moves_both_ways,
    check_several_adapters_equal_peft,
    check_trainable_names,
)
from .cases import (
    BASE_ATOL,
    MERGE_ATOL,
    NUMERIC_ATOL,
    ROUNDTRIP_ATOL,
    Case,
    assert_close,
    config_pair,
    conv_case,
    conv_inputs,
    conv_output,
    llama_logits,
    paired,
    peft_model,
    peftkit_model,
)
from .peftkit_only import (
    check_low_cpu_mem_usage_load,
    check_merge_unmerge_disable,
    check_mixed_batch,
    check_no_match_error,
    check_no_weighted_adapter,
    check_training_lowers_loss,
    check_truncated_file_is_a_clear_error,
)
from .shared_tests import ALL, ONE, shared_tests

__all__ = [
    "ALL",
    "BASE_ATOL",
    "MERGE_ATOL",
    "NUMERIC_ATOL",
    "ONE",
    "ROUNDTRIP_ATOL",
    "Case",
    "assert_close",
    "check_bf16_equals_peft",
    "check_config_fields",
    "check_default_targets",
    "check_gradients_equal_peft",
    "check_low_cpu_mem_usage_load",
    "check_merge_unmerge_disable",
    "check_merged_equals_peft",
    "check_mixed_batch",
    "check_no_match_error",
    "check_no_weighted_adapter",
    "check_peft_file_loads_in_peftkit",
    "check_peftkit_file_loads_in_peft",
    "check_same_files_and_names",
    "check_second_adapter_moves_both_ways",
    "check_same_files_as_peft",
    "check_several_adapters_equal_peft",
    "check_trainable_names",
    "check_training_lowers_loss",
    "check_truncated_file_is_a_clear_error",
    "config_pair",
    "conv_case",
    "conv_inputs",
    "conv_output",
    "llama_logits",
    "paired",
    "peft_model",
    "peftkit_model",
    "shared_tests",
]
