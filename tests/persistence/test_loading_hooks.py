"""Framework hooks of the loading path: a config takes its own from_pretrained options
(`PeftConfig._prepare_for_loading`), and an empty weights file is refused with its likely cause unless
`allow_missing_keys=True` (tensors a tuner holds itself count as the adapter's)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from safetensors.torch import save_file
from tests.conftest import tiny_llama

import peftkit
from peftkit.utils.warnings import AdapterLoadError, PeftWarning


@pytest.fixture
def saved(tmp_path):
    base = tiny_llama()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    return base, tmp_path


def test_a_config_takes_its_own_from_pretrained_options(saved, monkeypatch):
    base, folder = saved
    seen = []

    def prepare(self, model_id, kwargs, hub_kwargs):
        seen.append((model_id, kwargs.pop("my_option"), hub_kwargs))

    monkeypatch.setattr(peftkit.LoraConfig, "_prepare_for_loading", prepare)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PeftWarning)  # an option nothing took would warn
        peftkit.PeftModel.from_pretrained(copy.deepcopy(base), folder, my_option=3, local_files_only=True)
    assert seen == [(str(folder), 3, {"local_files_only": True})]
    with pytest.warns(PeftWarning, match="ignored keyword arguments.*other_option"):
        peftkit.PeftModel.from_pretrained(copy.deepcopy(base), folder, my_option=3, other_option=1)


def test_an_empty_weights_file_is_refused_unless_missing_keys_are_allowed(saved):
    base, folder = saved
    save_file({}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterLoadError, match="holds no tensors at all.*allow_missing_keys=True"):
        peftkit.PeftModel.from_pretrained(copy.deepcopy(base), folder)
    with pytest.warns(PeftWarning, match="left 4 of its 4 tensors unfilled"):
        model = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), folder, allow_missing_keys=True)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.lora_B["default"].weight, torch.zeros_like(layer.lora_B["default"].weight))
