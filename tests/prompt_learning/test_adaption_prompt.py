"""Adaption prompts (LLaMA-Adapter) against peft: module tree, outputs, generate, save/load both ways,
several adapters, disabling, and training."""

import copy
import dataclasses

import pytest
import torch
from tests.conftest import (
    llama_inputs,
    perturb_adapter_weights,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    trainable_names,
)

from .helpers import assert_close

MODELS = {
    "llama_gqa": tiny_llama,
    "llama_mha": lambda: tiny_llama(num_key_value_heads=4),
    "gpt2": tiny_gpt2,
}


def _pair(model_fn, **config_kwargs):
    import peft

    import peftkit

    kwargs = dict(task_type="CAUSAL_LM", adapter_len=3, adapter_layers=2, **config_kwargs)
    base = model_fn()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.AdaptionPromptConfig(**kwargs))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.AdaptionPromptConfig(**kwargs))
    perturb_adapter_weights(theirs, scale=0.5)  # the gates leave zero: the prompts act
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return base, theirs.eval(), ours.eval()


def test_config_fields_match_peft():
    import peft

    import peftkit

    def fields(cls):
        return [(f.name, f.default) for f in dataclasses.fields(cls)]

    assert fields(peftkit.AdaptionPromptConfig) == fields(peft.AdaptionPromptConfig)
    config = peftkit.AdaptionPromptConfig(adapter_len=2, adapter_layers=1)
    assert config.is_adaption_prompt and not config.is_prompt_learning


@pytest.mark.parametrize("model_key", list(MODELS))
def test_outputs_and_generate_match_peft(model_key):
    base, theirs, ours = _pair(MODELS[model_key])
    inputs = llama_inputs()
    expected = theirs(**inputs).logits
    assert_close(ours(**inputs).logits, expected)
    assert (expected - base(**inputs).logits).abs().max() > 1e-3
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    assert trainable_names(ours) == trainable_names(theirs)
    kwargs = dict(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(**kwargs), theirs.generate(**kwargs))


def test_a_new_adapter_leaves_the_model_unchanged():
    import peftkit

    base = tiny_llama()
    inputs = llama_inputs()
    model = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=4, adapter_layers=2),
    )
    assert torch.equal(model(**inputs).logits, base(**inputs).logits)  # zero gates
    assert all(not p.requires_grad for n, p in model.named_parameters() if "adaption_" not in n)


def test_save_load_both_ways(tmp_path):
    import peft
    from safetensors.torch import load_file

    import peftkit

    base, theirs, ours = _pair(tiny_llama)
    inputs = llama_inputs()
    expected = theirs(**inputs).logits
    theirs.save_pretrained(tmp_path / "peft")
    ours.save_pretrained(tmp_path / "kit")
    peft_file = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    kit_file = load_file(tmp_path / "kit" / "adapter_model.safetensors")
    assert sorted(kit_file) == sorted(peft_file)
    assert all(torch.equal(kit_file[k], peft_file[k]) for k in peft_file)
    assert_close(
        peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft")(**inputs).logits, expected
    )
    assert_close(
        peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "kit")(**inputs).logits, expected
    )


def test_several_adapters_switch_and_save(tmp_path):
    import peft

    import peftkit

    base = tiny_llama()
    inputs = llama_inputs()
    model = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=3, adapter_layers=1),
    )
    model.add_adapter(
        "b", peftkit.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=2, adapter_layers=2)
    )
    assert model.active_adapter == "default"  # as peft: adding does not activate
    perturb_adapter_weights(model, seed=1, scale=0.5)
    out_default = model(**inputs).logits
    model.set_adapter("b")
    perturb_adapter_weights(model, seed=2, scale=0.5)
    out_b = model(**inputs).logits
    assert (out_default - out_b).abs().max() > 1e-3
    model.save_pretrained(tmp_path)
    for library in (peftkit, peft):
        loaded = library.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
        loaded.load_adapter(tmp_path / "b", adapter_name="b")
        assert_close(loaded(**inputs).logits, out_default)
        loaded.set_adapter("b")
        assert_close(loaded(**inputs).logits, out_b)
    model.delete_adapter("b")
    assert model.active_adapter == "default"
    assert_close(model(**inputs).logits, out_default)


def test_disable_adapter_restores_the_base_model():
    base, _, ours = _pair(tiny_llama)
    inputs = llama_inputs()
    with ours.disable_adapter():
        assert torch.equal(ours(**inputs).logits, base(**inputs).logits)
    assert (ours(**inputs).logits - base(**inputs).logits).abs().max() > 1e-3


def test_training_lowers_the_loss():
    import peftkit

    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=4, adapter_layers=2)
    )
    model.train()
    inputs = llama_inputs(length=8)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.3)
    losses = []
    for _ in range(10):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_clear_errors():
    import peftkit

    with pytest.raises(ValueError, match="more adapter layers"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=2, adapter_layers=5)
        )
    with pytest.raises(ValueError, match="model types"):
        peftkit.get_peft_model(
            tiny_bert(task="feature"),
            peftkit.AdaptionPromptConfig(task_type="FEATURE_EXTRACTION", adapter_len=2, adapter_layers=1),
        )
    with pytest.raises(ValueError, match="attention modules"):
        peftkit.get_peft_model(
            tiny_llama(),
            peftkit.AdaptionPromptConfig(
                task_type="CAUSAL_LM", adapter_len=2, adapter_layers=1, target_modules="mlp"
            ),
        )
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=2, adapter_layers=1)
    )
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
