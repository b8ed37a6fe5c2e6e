"""The framework's hooks for adapter state a tuner shares with its layers: a layer's `shared_adapter_names`
keep its borrowed containers out of the adapter's file keys (the tuner saves them once), and a tuner's
`uses_shared_state` makes `inject_adapter_in_model` (which drops the tuner) refuse the method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit
from peftkit.tuners._adapter_keys import adapter_key_map
from peftkit.tuners.tuners_utils import BaseTuner, BaseTunerLayer


class _BorrowingLayer(BaseTunerLayer, nn.Module):
    """A layer with one container of its own and one borrowed from its owner (the bank)."""

    adapter_layer_names = ("fourierft_spectrum", "fourierft_bank")

    def __init__(self, bank: nn.ParameterDict, shared: tuple[str, ...]) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(nn.Linear(2, 2))
        self.fourierft_spectrum = nn.ParameterDict({"default": nn.Parameter(torch.zeros(3))})
        self.fourierft_bank = bank
        self.shared_adapter_names = shared


def _model(shared: tuple[str, ...]) -> nn.Module:
    bank = nn.ParameterDict({"default": nn.Parameter(torch.zeros(4))})
    model = nn.Module()
    model.first, model.second = _BorrowingLayer(bank, shared), _BorrowingLayer(bank, shared)
    model.peft_config = {"default": peftkit.FourierFTConfig(target_modules=["first", "second"])}
    return model


def test_borrowed_containers_are_not_file_keys():
    keys = adapter_key_map(_model(shared=("fourierft_bank",)), "default")
    assert keys == {
        "first.fourierft_spectrum.default": "first.fourierft_spectrum",
        "second.fourierft_spectrum.default": "second.fourierft_spectrum",
    }
    # without the declaration, each layer would save (and expect) its own copy of the bank
    assert "first.fourierft_bank.default" in adapter_key_map(_model(shared=()), "default")


def test_inject_adapter_in_model_refuses_tuners_with_shared_state(monkeypatch):
    tuner = peftkit.FourierFTModel
    assert BaseTuner.uses_shared_state is False
    monkeypatch.setattr(tuner, "uses_shared_state", True)
    model = nn.Sequential(nn.Linear(4, 4))
    config = peftkit.FourierFTConfig(n_frequency=2, target_modules=["0"])
    with pytest.raises(ValueError, match="uses shared state stored on the tuner.*get_peft_model"):
        peftkit.inject_adapter_in_model(config, model)
    assert isinstance(model[0], nn.Linear)  # nothing was injected
