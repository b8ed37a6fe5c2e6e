"""transformers' model-level adapter API as peftkit functions (no `peft` alias): the same adapters, keys,
files and outputs as transformers' own methods running on peft."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama, tiny_llama_config
from transformers import LlamaForCausalLM

import peftkit
from peftkit.integrations import transformers as integration

TARGETS = ["q_proj", "v_proj"]


def _logits(model, inputs=None):
    with torch.no_grad():
        return model(**(inputs or llama_inputs())).logits


@pytest.fixture
def pair():
    """A tiny Llama with one adapter added by transformers+peft and the same one by peftkit's functions."""
    import peft

    base = tiny_llama()
    theirs, ours = copy.deepcopy(base), copy.deepcopy(base)
    theirs.add_adapter(peft.LoraConfig(target_modules=TARGETS))
    integration.add_adapter(ours, peftkit.LoraConfig(target_modules=TARGETS))
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    return base, theirs, ours


def test_add_adapter_trains_only_the_adapter_and_matches_peft(pair):
    base, theirs, ours = pair
    assert integration.active_adapters(ours) == theirs.active_adapters() == ["default"]
    trainable = sorted(n for n, p in ours.named_parameters() if p.requires_grad)
    assert trainable == sorted(n for n, p in theirs.named_parameters() if p.requires_grad)
    assert trainable and all(".lora_" in n for n in trainable)
    torch.testing.assert_close(_logits(ours), _logits(theirs), atol=1e-6, rtol=0)
    assert (_logits(ours) - _logits(base)).abs().max() > 1e-4


def test_adapter_state_dict_equals_transformers_on_peft(pair):
    _, theirs, ours = pair
    expected = theirs.get_adapter_state_dict()
    got = integration.get_adapter_state_dict(ours)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    # a full state dict handed in (as FSDP/DeepSpeed do) is filtered the same way
    full = {k: v.clone() for k, v in ours.state_dict().items()}
    assert integration.get_adapter_state_dict(ours, state_dict=full).keys() == expected.keys()


def test_disable_enable_set_and_delete(pair):
    base, _, ours = pair
    adapted = _logits(ours)
    integration.disable_adapters(ours)
    torch.testing.assert_close(_logits(ours), _logits(base), atol=1e-6, rtol=0)
    integration.enable_adapters(ours)
    torch.testing.assert_close(_logits(ours), adapted, atol=1e-6, rtol=0)

    integration.add_adapter(
        ours, peftkit.LoraConfig(target_modules=["k_proj"], init_lora_weights=False), "other"
    )
    assert set(ours.peft_config) == {"default", "other"}
    assert integration.active_adapters(ours) == ["other"]
    other = _logits(ours)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all(".other." in n for n in trainable)
    integration.set_adapter(ours, "default")
    torch.testing.assert_close(_logits(ours), adapted, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="not found"):
        integration.set_adapter(ours, "missing")

    integration.delete_adapter(ours, "default")
    assert set(ours.peft_config) == {"other"} and integration.active_adapters(ours) == ["other"]
    torch.testing.assert_close(_logits(ours), other, atol=1e-6, rtol=0)
    integration.delete_adapter(ours, "other")
    assert not hasattr(ours, "peft_config")
    assert not integration.has_adapters(ours)


def test_saved_adapter_loads_in_peft_and_peft_adapter_loads_here(pair, tmp_path):
    import peft

    base, theirs, ours = pair
    integration.save_adapters(ours, tmp_path / "ours")
    in_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours"))
    torch.testing.assert_close(_logits(in_peft), _logits(ours), atol=1e-6, rtol=0)

    theirs.save_pretrained(tmp_path / "theirs")  # transformers' save of a model carrying peft adapters
    fresh = copy.deepcopy(base)
    integration.load_adapter(fresh, tmp_path / "theirs", "loaded")
    assert integration.active_adapters(fresh) == ["loaded"]
    assert not any(p.requires_grad for p in fresh.parameters()) and not fresh.training
    torch.testing.assert_close(_logits(fresh), _logits(theirs), atol=1e-6, rtol=0)

    trainable = copy.deepcopy(base)
    integration.load_adapter(trainable, tmp_path / "theirs", is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == {
        n for n, p in ours.named_parameters() if p.requires_grad
    }


def test_failed_load_leaves_the_model_without_the_new_adapter(pair, tmp_path):
    _, _, ours = pair
    integration.save_adapters(ours, tmp_path)
    other = LlamaForCausalLM(tiny_llama_config(hidden_size=64, intermediate_size=64))  # other shapes
    with pytest.raises(Exception, match="(?i)size mismatch"):
        integration.load_adapter(other, tmp_path)
    assert not integration.has_adapters(other)
    assert not any(type(m).__module__.startswith("peftkit") for m in other.modules())


def test_adapter_mixin_gives_the_methods(tmp_path):
    class AdaptableLlama(integration.AdapterMixin, LlamaForCausalLM):
        pass

    torch.manual_seed(0)
    model = AdaptableLlama(tiny_llama_config()).eval()
    model.add_adapter(peftkit.LoraConfig(target_modules=TARGETS, init_lora_weights=False))
    assert model.active_adapters() == ["default"]
    model.save_adapters(tmp_path)
    fresh = copy.deepcopy(model)
    fresh.delete_adapter("default")
    fresh.load_adapter(str(tmp_path), "default")
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=1e-6, rtol=0)
