"""transformers' model-level adapter API as peftkit functions (no `peft` alias): the same adapters, keys,
files and outputs as transformers' own methods running on peft.

transformers 5.24+ refuses peft 0.21.2 (its gate wants 0.22.0), so what transformers-on-peft answers
(active adapters, trainable names, logits, adapter state dict, saved files) comes from the oracle:
live where transformers accepts peft, recorded from such a transformers elsewhere (tests/oracle.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import llama_inputs, tiny_llama, tiny_llama_config
from tests.oracle import portable_init_
from transformers import LlamaForCausalLM

import peftkit
from peftkit.integrations import transformers as integration

TARGETS = ["q_proj", "v_proj"]
ADAPTER_SEED = 3


def _logits(model, inputs=None):
    with torch.no_grad():
        return model(**(inputs or llama_inputs())).logits


def _trainable(model) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def transformers_on_peft(base, folder: Path) -> dict:
    """transformers' own adapter methods on peft: add an adapter, draw its weights, save it."""
    import peft

    theirs = copy.deepcopy(base)
    theirs.add_adapter(peft.LoraConfig(target_modules=TARGETS))
    portable_init_(theirs, seed=ADAPTER_SEED, only_trainable=True)
    theirs.save_pretrained(folder)
    saved_config = json.loads((folder / "adapter_config.json").read_text())
    # peft writes target_modules from a set, so its order follows the per-process string hash.
    saved_config["target_modules"] = sorted(saved_config["target_modules"])
    return {
        "active_adapters": theirs.active_adapters(),
        "trainable": _trainable(theirs),
        "logits": _logits(theirs),
        "adapter_state_dict": theirs.get_adapter_state_dict(),
        "saved_weights": load_file(folder / "adapter_model.safetensors"),
        "saved_config": saved_config,
    }


@pytest.fixture
def pair(peft_oracle, tmp_path):
    """A tiny Llama, transformers+peft's answers for one adapter on it, and the same adapter added by
    peftkit's functions (the same weights: both drawn from ADAPTER_SEED by parameter name)."""
    base = portable_init_(tiny_llama(), seed=1000)
    theirs = peft_oracle(
        lambda: transformers_on_peft(base, tmp_path / "recorded"), base, TARGETS, ADAPTER_SEED
    )
    ours = copy.deepcopy(base)
    integration.add_adapter(ours, peftkit.LoraConfig(target_modules=TARGETS))
    portable_init_(ours, seed=ADAPTER_SEED, only_trainable=True)
    return base, theirs, ours


def test_add_adapter_trains_only_the_adapter_and_matches_peft(pair):
    base, theirs, ours = pair
    assert integration.active_adapters(ours) == theirs["active_adapters"] == ["default"]
    trainable = _trainable(ours)
    assert trainable == theirs["trainable"]
    assert trainable and all(".lora_" in n for n in trainable)
    torch.testing.assert_close(_logits(ours), theirs["logits"], atol=1e-6, rtol=0)
    assert (_logits(ours) - _logits(base)).abs().max() > 1e-4


def test_adapter_state_dict_equals_transformers_on_peft(pair):
    _, theirs, ours = pair
    expected = theirs["adapter_state_dict"]
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

    # the folder transformers' save_pretrained wrote for the model carrying peft's adapter
    (tmp_path / "theirs").mkdir()
    save_file(theirs["saved_weights"], tmp_path / "theirs" / "adapter_model.safetensors")
    (tmp_path / "theirs" / "adapter_config.json").write_text(json.dumps(theirs["saved_config"]))
    fresh = copy.deepcopy(base)
    integration.load_adapter(fresh, tmp_path / "theirs", "loaded")
    assert integration.active_adapters(fresh) == ["loaded"]
    assert not any(p.requires_grad for p in fresh.parameters()) and not fresh.training
    torch.testing.assert_close(_logits(fresh), theirs["logits"], atol=1e-6, rtol=0)

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
