"""generate() with prompt-learning adapters against peft: same tokens (greedy, sampling with a seed,
beam search), transformers 5 Cache objects, left-padded batches."""

import pytest
import torch
from tests.conftest import llama_inputs, tiny_llama, tiny_t5

from peftkit.utils.cache_names import output_cache

from .helpers import make_prompt_pair

CASES = {
    "llama_prompt": (tiny_llama, "PromptTuningConfig", "CAUSAL_LM"),
    "llama_prefix": (tiny_llama, "PrefixTuningConfig", "CAUSAL_LM"),
    "llama_ptuning": (tiny_llama, "PromptEncoderConfig", "CAUSAL_LM"),
    "t5_prompt": (tiny_t5, "PromptTuningConfig", "SEQ_2_SEQ_LM"),
    "t5_prefix": (tiny_t5, "PrefixTuningConfig", "SEQ_2_SEQ_LM"),
}

MODES = {
    "greedy": {"do_sample": False},
    "sampling": {"do_sample": True, "top_k": 0},
    "beam": {"num_beams": 3, "do_sample": False},
    "beam_sequences": {"num_beams": 2, "num_return_sequences": 2, "do_sample": False},
}


def _generate(model, mode: str, **extra):
    torch.manual_seed(5)
    return model.generate(**llama_inputs(), max_new_tokens=6, pad_token_id=0, **MODES[mode], **extra)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", list(CASES))
def test_generate_matches_peft(case, mode, peft_oracle):
    """peft's tokens: live, or recorded where peft's generation breaks (transformers >= 5.24)."""
    model_fn, config_name, task_type = CASES[case]
    base, theirs, ours = make_prompt_pair(
        model_fn, config_name, task_type=task_type, num_virtual_tokens=3, seed=1
    )
    expected = peft_oracle(lambda: _generate(theirs, mode), theirs, llama_inputs(), MODES[mode])
    got = _generate(ours, mode)
    assert torch.equal(got, expected)
    if mode == "greedy":  # the adapter steers generation: the same call on the base model differs
        assert not torch.equal(got, _generate(base, mode))


@pytest.mark.parametrize("case", list(CASES))
def test_generate_with_adapter_disabled_is_the_base_model(case):
    model_fn, config_name, task_type = CASES[case]
    base, _, ours = make_prompt_pair(model_fn, config_name, task_type=task_type, num_virtual_tokens=3)
    with ours.disable_adapter():
        got = _generate(ours, "greedy")
    assert torch.equal(got, _generate(base, "greedy"))


def test_generate_leaves_the_base_model_unpatched():
    _, _, ours = make_prompt_pair(
        tiny_llama, "PrefixTuningConfig", task_type="CAUSAL_LM", num_virtual_tokens=3
    )
    _generate(ours, "greedy")
    assert "prepare_inputs_for_generation" not in ours.base_model.__dict__


def test_prefix_generation_returns_a_cache_holding_the_prefix():
    """return_dict_in_generate: the cache is a transformers DynamicCache, prefix included."""
    from transformers import DynamicCache

    _, _, ours = make_prompt_pair(
        tiny_llama, "PrefixTuningConfig", task_type="CAUSAL_LM", num_virtual_tokens=3
    )
    out = ours.generate(**llama_inputs(), max_new_tokens=4, return_dict_in_generate=True, pad_token_id=0)
    cache = output_cache(out)  # `cache` from transformers 5.24, `past_key_values` before
    assert isinstance(cache, DynamicCache)
    # 3 virtual + 7 prompt + 3 fed-back generated tokens (the last one is never fed)
    assert cache.get_seq_length() == 3 + 7 + 3


def test_static_cache_is_refused_for_prefix_tuning():
    _, _, ours = make_prompt_pair(
        tiny_llama, "PrefixTuningConfig", task_type="CAUSAL_LM", num_virtual_tokens=3
    )
    with pytest.raises(ValueError, match="dynamic cache"):
        ours.generate(**llama_inputs(), max_new_tokens=2, cache_implementation="static", pad_token_id=0)
