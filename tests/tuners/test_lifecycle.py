"""Adapter lifecycle: merge/unmerge, merge_and_unload, unload, disable, set/delete/add adapters."""

import copy

import pytest
import torch
from tests.conftest import (
    llama_inputs,
    perturb_adapter_weights,
    tiny_llama,
    tiny_llama_seq_cls,
    trainable_names,
)

import peftkit
from peftkit import LoraConfig, get_peft_model
from peftkit.tuners.tuners_utils import BaseTunerLayer


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def two_adapters():
    base = tiny_llama()
    model = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules=["q_proj", "v_proj"]))
    model.add_adapter("other", LoraConfig(target_modules=["k_proj", "q_proj"], r=4, use_rslora=True))
    for name in ("default", "other"):
        model.set_adapter(name)
        perturb_adapter_weights(model, seed=len(name))
    model.set_adapter("default")
    return base, model.eval()


def test_merge_unmerge_round_trip(two_adapters):
    _base, model = two_adapters
    inputs = llama_inputs()
    unmerged = _logits(model, inputs)
    weight = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.clone()
    model.merge_adapter()
    assert model.base_model.model.model.layers[0].self_attn.q_proj.merged
    torch.testing.assert_close(_logits(model, inputs), unmerged, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(_logits(model, inputs), unmerged, atol=1e-5, rtol=0)
    restored = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    torch.testing.assert_close(restored, weight, atol=1e-6, rtol=0)  # unmerge inverts merge (delta in fp32)


def test_merge_and_unload_removes_adapter_layers(two_adapters):
    _base, model = two_adapters
    inputs = llama_inputs()
    expected = _logits(model, inputs)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, inputs), expected, atol=1e-5, rtol=0)


def test_merge_and_unload_selected_adapters(two_adapters):
    _base, model = two_adapters
    inputs = llama_inputs()
    model.set_adapter(["default", "other"])
    both = _logits(model, inputs)
    model.set_adapter("default")
    merged = model.merge_and_unload(adapter_names=["default", "other"])
    torch.testing.assert_close(_logits(merged, inputs), both, atol=1e-5, rtol=0)


def test_unload_gives_base_exactly(two_adapters):
    base, model = two_adapters
    inputs = llama_inputs()
    unloaded = model.unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in unloaded.modules())
    assert torch.equal(_logits(unloaded, inputs), _logits(base, inputs))


def test_disable_adapter_gives_base_exactly_and_restores(two_adapters):
    base, model = two_adapters
    inputs = llama_inputs()
    adapted = _logits(model, inputs)
    with model.disable_adapter():
        assert torch.equal(_logits(model, inputs), _logits(base, inputs))
        assert not trainable_names(model)
    assert torch.equal(_logits(model, inputs), adapted)
    assert trainable_names(model)


def test_set_adapter_switches_outputs_and_trainability(two_adapters):
    _base, model = two_adapters
    inputs = llama_inputs()
    first = _logits(model, inputs)
    model.set_adapter("other")
    second = _logits(model, inputs)
    assert not torch.allclose(first, second, atol=1e-4)
    assert model.active_adapter == "other" and model.active_adapters == ["other"]
    assert all(".other" in n for n in trainable_names(model))
    model.set_adapter("default")
    torch.testing.assert_close(_logits(model, inputs), first, atol=0, rtol=0)
    with pytest.raises(ValueError, match="available adapters"):
        model.set_adapter("missing")


def test_multiple_active_adapters_sum_their_deltas(two_adapters):
    _base, model = two_adapters
    inputs = llama_inputs()
    model.set_adapter(["default", "other"])
    assert model.active_adapters == ["default", "other"]
    both = _logits(model, inputs)
    model.set_adapter("default")
    assert not torch.allclose(both, _logits(model, inputs), atol=1e-4)


def test_delete_adapter(two_adapters):
    base, model = two_adapters
    inputs = llama_inputs()
    model.set_adapter("other")
    model.delete_adapter("other")
    assert set(model.peft_config) == {"default"}
    assert model.active_adapters == ["default"]
    assert not any(".other" in n for n, _ in model.named_parameters())
    k_proj = model.base_model.model.model.layers[0].self_attn.k_proj
    assert not k_proj.has_adapter("other")
    with pytest.raises(ValueError, match="does not exist"):
        model.delete_adapter("other")
    # the remaining adapter still works
    assert not torch.allclose(_logits(model, inputs), _logits(base, inputs), atol=1e-4)


def test_add_adapter_keeps_active_and_matches_peft_trainability():
    import peft

    ours = get_peft_model(tiny_llama_seq_cls(), LoraConfig(target_modules=["q_proj"], task_type="SEQ_CLS"))
    theirs = peft.get_peft_model(
        tiny_llama_seq_cls(), peft.LoraConfig(target_modules=["q_proj"], task_type="SEQ_CLS")
    )
    for model, cfg in ((ours, LoraConfig), (theirs, peft.LoraConfig)):
        model.add_adapter("b", cfg(target_modules=["q_proj", "k_proj"], task_type="SEQ_CLS"))
    assert ours.active_adapter == "default"
    assert trainable_names(ours) == trainable_names(theirs)
    ours.set_adapter("b")
    theirs.set_adapter("b")
    assert trainable_names(ours) == trainable_names(theirs)


def test_duplicate_and_invalid_adapter_names():
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("default", LoraConfig(target_modules=["q_proj"]))
    for bad in ("", "a.b", "../x", "__base__"):
        with pytest.raises(ValueError, match="dapter name|reserved"):
            model.add_adapter(bad, LoraConfig(target_modules=["q_proj"]))
    assert set(model.peft_config) == {"default"}


def test_add_adapter_matching_nothing_is_an_error_and_leaves_no_trace():
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="nope_proj"):
        model.add_adapter("b", LoraConfig(target_modules=["nope_proj"]))
    assert set(model.peft_config) == {"default"}


def test_safe_merge_refuses_broken_adapter_and_keeps_base():
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    before = layer.base_layer.weight.clone()
    with torch.no_grad():
        layer.lora_B["default"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, before)
    assert not layer.merged


def test_merge_lora_bias_without_base_bias_is_clear_error():
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"], lora_bias=True))
    with pytest.raises(RuntimeError, match="no bias"):
        model.merge_adapter()


def test_modules_to_save_lifecycle():
    base = tiny_llama_seq_cls()
    model = peftkit.get_peft_model(
        copy.deepcopy(base), LoraConfig(target_modules=["q_proj"], task_type="SEQ_CLS")
    )
    wrapper = model.base_model.model.score
    assert isinstance(wrapper, peftkit.utils.ModulesToSaveWrapper)
    assert model.peft_config["default"].modules_to_save == ["classifier", "score"]
    with torch.no_grad():
        wrapper.modules_to_save["default"].weight.add_(1.0)
    inputs = llama_inputs()
    with model.disable_adapter():
        assert torch.equal(_logits(model, inputs), _logits(base, inputs))
    merged = copy.deepcopy(model).merge_and_unload()
    assert torch.equal(merged.score.weight, wrapper.modules_to_save["default"].weight)
    unloaded = copy.deepcopy(model).unload()  # peft keeps the trained head on unload as well
    assert torch.equal(unloaded.score.weight, wrapper.modules_to_save["default"].weight)


@pytest.mark.parametrize("config_cls, kwargs", [("LoraConfig", {}), ("VeraConfig", {"r": 4})])
def test_only_one_adapter_may_train_biases(config_cls, kwargs):
    cls = getattr(peftkit, config_cls)
    model = get_peft_model(
        tiny_llama(attention_bias=True), cls(target_modules=["q_proj"], bias="all", **kwargs)
    )
    with pytest.raises(ValueError, match="supports only 1 adapter with bias"):
        model.add_adapter("second", cls(target_modules=["q_proj"], bias="all", **kwargs))
    assert set(model.peft_config) == {"default"}
