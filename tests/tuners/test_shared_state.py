"""The framework's hooks for adapter state a tuner shares with its layers: a tuner's `shared_state_names`
keep its layers' references out of the adapter's file keys (the tuner saves them once), and its
`uses_shared_state` makes `inject_adapter_in_model` (which drops the tuner) refuse the method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit
from peftkit.tuners._adapter_keys import adapter_key_map
from peftkit.tuners.tuners_utils import BaseTuner


def _unilora(bias: str = "none") -> nn.Module:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 4, bias=True), nn.ReLU(), nn.Linear(4, 2, bias=True))
    config = peftkit.UniLoraConfig(target_modules=["0", "2"], r=2, theta_d_length=8, bias=bias)
    return peftkit.get_peft_model(base, config)


def test_containers_the_tuner_shares_are_saved_once_under_the_tuner(monkeypatch):
    keys = adapter_key_map(_unilora(), "default")
    shared = sorted(k for k in keys if "unilora_theta_d" in k)
    assert shared == ["base_model.unilora_theta_d.default"]
    assert keys["base_model.unilora_theta_d.default"] == "base_model.unilora_theta_d"
    # without the tuner's declaration, each layer would save (and expect) its own copy
    monkeypatch.setattr(peftkit.UniLoraModel, "shared_state_names", ())
    copies = [k for k in adapter_key_map(_unilora(), "default") if ".unilora_theta_d." in k]
    assert "base_model.model.0.unilora_theta_d.default" in copies


def test_bias_only_still_finds_the_layers_that_only_borrow_containers():
    keys = adapter_key_map(_unilora(bias="unilora_only"), "default")
    assert {"base_model.model.0.base_layer.bias", "base_model.model.2.base_layer.bias"} <= set(keys)
    assert not [k for k in keys if k.startswith("base_model.model.") and "theta_d" in k]


def test_inject_adapter_in_model_refuses_tuners_with_shared_state(monkeypatch):
    tuner = peftkit.FourierFTModel
    assert BaseTuner.uses_shared_state is False
    monkeypatch.setattr(tuner, "uses_shared_state", True)
    model = nn.Sequential(nn.Linear(4, 4))
    config = peftkit.FourierFTConfig(n_frequency=2, target_modules=["0"])
    with pytest.raises(ValueError, match="uses shared state stored on the tuner.*get_peft_model"):
        peftkit.inject_adapter_in_model(config, model)
    assert isinstance(model[0], nn.Linear)  # nothing was injected
