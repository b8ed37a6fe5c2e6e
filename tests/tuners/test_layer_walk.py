"""The quick walk to adapter layers that mixed-adapter calls use finds exactly what `model.modules()`
finds, in the same order, on models whose adapter layers nest or sit inside modules_to_save copies."""

from __future__ import annotations

import pytest
from tests.conftest import tiny_llama, tiny_llama_seq_cls

import peftkit
from peftkit.tuners._layer_walk import adapter_modules
from peftkit.tuners.tuners_utils import BaseTunerLayer
from peftkit.utils.modules_to_save import ModulesToSaveWrapper


def _by_full_walk(model):
    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper))]


def _lora_with_three_adapters():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(target_modules="all-linear", r=4))
    model.add_adapter("second", peftkit.LoraConfig(target_modules=["q_proj", "v_proj"], r=2, use_dora=True))
    model.add_adapter("third", peftkit.LoraConfig(target_modules=["down_proj"], r=8))
    return model


def _mixed_loha_over_lora():
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj", "v_proj"]), mixed=True
    )
    model.add_adapter("loha", peftkit.LoHaConfig(target_modules=["q_proj", "o_proj"]))
    return model


def _classifier_with_modules_to_save():
    config = peftkit.LoraConfig(target_modules=["q_proj"], modules_to_save=["score"], task_type="SEQ_CLS")
    return peftkit.get_peft_model(tiny_llama_seq_cls(), config)


def _target_parameters():
    config = peftkit.LoraConfig(target_modules=["q_proj"], target_parameters=["mlp.up_proj.weight"])
    return peftkit.get_peft_model(tiny_llama(), config)


@pytest.mark.parametrize(
    "build",
    [_lora_with_three_adapters, _mixed_loha_over_lora, _classifier_with_modules_to_save, _target_parameters],
)
def test_the_quick_walk_finds_what_the_full_walk_finds(build):
    model = build()
    expected = _by_full_walk(model)
    found = list(adapter_modules(model))
    assert len(expected) > 0
    assert [id(m) for m in found] == [id(m) for m in expected]


def test_nested_adapter_layers_are_found_through_base_layer():
    model = _mixed_loha_over_lora()
    found = list(adapter_modules(model))
    nested = [m for m in found if isinstance(m.base_layer, BaseTunerLayer)] if found else []
    assert nested, "q_proj carries a LoHa layer around a LoRA layer"
    assert all(m.base_layer in found for m in nested)
