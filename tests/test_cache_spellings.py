"""A cache passed as `cache=` (transformers 5.24+) or `past_key_values=` (before) works on every method
that takes one, on whichever transformers is installed, and peftkit's own calls raise no deprecation
warning. The two CI environments run this file on both sides of the rename."""

from __future__ import annotations

import inspect
import logging
import warnings
from contextlib import contextmanager

import pytest
import torch
from tests.conftest import perturb_adapter_weights, tiny_llama, tiny_t5

import peftkit
from peftkit.utils.cache_names import installed_name, output_cache

SPELLINGS = ["cache", "past_key_values"]
ATOL = 1e-5  # incremental decoding vs one full forward, fp32
# aLoRA: each row's last invocation (7, 8) lies in the first part, as in a prompt
IDS = torch.tensor([[3, 4, 5, 7, 8, 9, 10, 11, 12, 13], [7, 8, 3, 4, 5, 6, 9, 10, 11, 12]])
SPLIT = 6  # the first forward sees IDS[:, :SPLIT], the second the rest with the first one's cache


@contextmanager
def no_deprecation_warnings():
    """Fails if a warning or a transformers log record about something deprecated is emitted inside."""
    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()  # a warning seen earlier in the process would be swallowed
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        library_logger.removeHandler(handler)
    messages = [str(w.message) for w in caught] + records
    deprecations = [m for m in messages if "deprecat" in m.lower()]
    assert not deprecations, deprecations


def test_the_detector_sees_transformers_own_cache_deprecation():
    model = tiny_llama()
    if installed_name() == "past_key_values":  # before the rename: the old name is the only one
        assert "cache" not in inspect.signature(type(model).forward).parameters
        return
    first = model(IDS[:, :SPLIT], use_cache=True)
    with pytest.raises(AssertionError, match="deprecated"), no_deprecation_warnings():
        model(IDS[:, SPLIT:], past_key_values=output_cache(first), use_cache=True)


def _lora(task_type="CAUSAL_LM", **extra):
    config = peftkit.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type=task_type, **extra)
    model = peftkit.get_peft_model(tiny_llama(), config)
    perturb_adapter_weights(model)
    return model.eval()


def _adaption_prompt():
    config = peftkit.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=3, adapter_layers=2)
    model = peftkit.get_peft_model(tiny_llama(), config)
    perturb_adapter_weights(model, scale=0.5)  # the gates leave zero: the prompts act
    return model.eval()


DECODERS = {
    "lora": lambda: _lora(),
    "lora_without_task_type": lambda: _lora(task_type=None),
    "alora": lambda: _lora(alora_invocation_tokens=[7, 8]),
    "adaption_prompt": _adaption_prompt,
}


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("method", list(DECODERS))
def test_incremental_forward_takes_the_cache_under_either_name(method, spelling):
    model = DECODERS[method]()
    with torch.no_grad():
        full = model(IDS).logits
        with no_deprecation_warnings():
            first = model(IDS[:, :SPLIT], use_cache=True)
            second = model(IDS[:, SPLIT:], use_cache=True, **{spelling: output_cache(first)})
    assert output_cache(second).get_seq_length() == IDS.shape[1]  # the cache was used and grew
    diff = (second.logits - full[:, SPLIT:]).abs().max().item()
    assert diff <= ATOL, f"max abs difference {diff} > {ATOL}"


def test_both_names_at_once_are_refused():
    model = _lora()
    first = model(IDS[:, :SPLIT], use_cache=True)
    cache = output_cache(first)
    with pytest.raises(ValueError, match="not both"):
        model(IDS[:, SPLIT:], cache=cache, past_key_values=cache)


def _prompt_learning(config_name, **kwargs):
    model = peftkit.get_peft_model(
        tiny_llama(), getattr(peftkit, config_name)(task_type="CAUSAL_LM", num_virtual_tokens=3, **kwargs)
    )
    perturb_adapter_weights(model, scale=0.5)
    return model.eval()


GENERATORS = {
    **DECODERS,
    "prefix_tuning": lambda: _prompt_learning("PrefixTuningConfig"),
    "p_tuning": lambda: _prompt_learning("PromptEncoderConfig", encoder_hidden_size=16),
    "prompt_tuning": lambda: _prompt_learning("PromptTuningConfig"),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("method", list(GENERATORS))
def test_generate_takes_a_cache_under_either_name(method, spelling):
    """generate(..., <name>=DynamicCache()) (the caller's own cache object) gives what generate without
    one gives, fills that object, and warns of nothing deprecated."""
    from transformers import DynamicCache

    model = GENERATORS[method]()
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad(), no_deprecation_warnings():
        expected = model.generate(input_ids=IDS, **settings)
        cache = DynamicCache()
        got = model.generate(input_ids=IDS, **settings, **{spelling: cache})
    assert torch.equal(got, expected)
    assert cache.get_seq_length() > IDS.shape[1]  # the generation loop used the object it was given


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_seq2seq_prefix_generate_takes_a_cache_under_either_name(spelling):
    from transformers import DynamicCache, EncoderDecoderCache

    config = peftkit.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3)
    model = peftkit.get_peft_model(tiny_t5(), config).eval()
    perturb_adapter_weights(model, scale=0.5)
    ids = IDS % 100
    settings = dict(max_new_tokens=4, do_sample=False)
    with torch.no_grad(), no_deprecation_warnings():
        expected = model.generate(input_ids=ids, **settings)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        got = model.generate(input_ids=ids, **settings, **{spelling: cache})
    assert torch.equal(got, expected)
    assert cache.get_seq_length() > 3  # the prefix and the decoded tokens are in the caller's object


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", "SEQ_CLS", "TOKEN_CLS", "FEATURE_EXTRACTION"])
def test_prefix_forward_passes_the_prefix_without_deprecation(task_type):
    config = peftkit.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=3)
    base = tiny_llama() if task_type == "CAUSAL_LM" else _llama_for(task_type)
    model = peftkit.get_peft_model(base, config).eval()
    perturb_adapter_weights(model, scale=0.5)
    with torch.no_grad(), no_deprecation_warnings():
        with_prefix = model(input_ids=IDS, attention_mask=torch.ones_like(IDS))
        with model.disable_adapter():
            without = model(input_ids=IDS, attention_mask=torch.ones_like(IDS))
    name = "last_hidden_state" if task_type == "FEATURE_EXTRACTION" else "logits"
    assert not torch.allclose(getattr(with_prefix, name), getattr(without, name), atol=1e-3)  # it acted


def _llama_for(task_type):
    import transformers
    from tests.conftest import tiny_llama_config

    cls = {
        "SEQ_CLS": transformers.LlamaForSequenceClassification,
        "TOKEN_CLS": transformers.LlamaForTokenClassification,
        "FEATURE_EXTRACTION": transformers.LlamaModel,
    }[task_type]
    torch.manual_seed(0)
    return cls(tiny_llama_config(num_labels=3)).eval()
