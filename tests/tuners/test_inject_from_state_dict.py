"""`inject_adapter_in_model(..., state_dict=...)`: the state dict's keys decide which modules are adapted
(for checkpoints whose target modules are not known), as in peft."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tests.conftest import tiny_llama

import peftkit


def _adapted(model: torch.nn.Module) -> list[str]:
    return sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)


def _donor_state_dict(targets: list[str]) -> dict[str, torch.Tensor]:
    """Adapter tensors keyed as in the model (no `base_model.model.`), from an adapter on `targets`."""
    donor = peftkit.inject_adapter_in_model(peftkit.LoraConfig(target_modules=targets, r=4), tiny_llama())
    return {k: v for k, v in donor.state_dict().items() if "lora_" in k}


def test_state_dict_keys_choose_the_modules_as_in_peft():
    import peft

    state_dict = _donor_state_dict(["k_proj", "up_proj"])
    base = tiny_llama()
    theirs, ours = copy.deepcopy(base), copy.deepcopy(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peftkit.inject_adapter_in_model(
            peftkit.LoraConfig(target_modules=["q_proj"], r=4), ours, state_dict=state_dict
        )
    peft.inject_adapter_in_model(
        peft.LoraConfig(target_modules=["q_proj"], r=4), theirs, state_dict=state_dict
    )
    assert _adapted(ours) == _adapted(theirs)
    assert _adapted(ours) and all(n.endswith(("k_proj", "up_proj")) for n in _adapted(ours))
    messages = [str(w.message) for w in caught if issubclass(w.category, peftkit.PeftWarning)]
    assert any("differs from its target_modules" in m and "q_proj" in m for m in messages), messages


def test_without_state_dict_the_config_decides():
    ours = peftkit.inject_adapter_in_model(peftkit.LoraConfig(target_modules=["q_proj"], r=4), tiny_llama())
    assert _adapted(ours) and all(n.endswith("q_proj") for n in _adapted(ours))


def test_compiled_model_keys_are_understood():
    state_dict = {"_orig_mod." + k: v for k, v in _donor_state_dict(["v_proj"]).items()}
    ours = peftkit.inject_adapter_in_model(
        peftkit.LoraConfig(target_modules=["v_proj"], r=4), tiny_llama(), state_dict=state_dict
    )
    assert _adapted(ours) and all(n.endswith("v_proj") for n in _adapted(ours))


def test_a_state_dict_naming_no_module_is_refused():
    with pytest.raises(ValueError, match="names no module of the model"):
        peftkit.inject_adapter_in_model(
            peftkit.LoraConfig(target_modules=["q_proj"]),
            tiny_llama(),
            state_dict={"base_model.model.nowhere.lora_A.weight": torch.zeros(1)},
        )


def test_target_parameters_cannot_come_from_a_state_dict():
    with pytest.raises(ValueError, match="target_parameters"):
        peftkit.inject_adapter_in_model(
            peftkit.LoraConfig(target_modules=[], target_parameters=["q_proj.weight"]),
            tiny_llama(),
            state_dict=_donor_state_dict(["q_proj"]),
        )
