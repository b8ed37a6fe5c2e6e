"""KaSA (`kasa_config`): the same truncated base weights, outputs, gradients, regularisers and files as peft."""

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama, trainable_names
from tests.lora_family.helpers import max_diff

import peftkit

ATOL = 1e-5
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _pair(base, **extra):
    import peft

    kwargs = dict(r=4, target_modules=TARGETS, kasa_config={"beta": 0.01, "gamma": 0.1}, **extra)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**kwargs))
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _base_weights(model):
    return {k: v for k, v in model.state_dict().items() if "base_layer.weight" in k}


def test_config_fields_and_defaults_are_peft_s():
    from peft.tuners.lora.config import KasaConfig as Theirs

    def defaults(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}

    assert defaults(peftkit.KasaConfig) == defaults(Theirs)
    for bad in ({"beta": -1.0}, {"gamma": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            peftkit.KasaConfig(**bad)


def test_truncation_outputs_gradients_and_regulariser_equal_peft():
    base = tiny_llama()
    inputs = llama_inputs()
    theirs, ours = _pair(base)
    assert trainable_names(ours) == trainable_names(theirs)
    truncated = _base_weights(ours)
    assert max(max_diff(truncated[k], v) for k, v in _base_weights(theirs).items()) < ATOL
    key = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    # rank 32 - 4: the 4 smallest singular values are gone
    assert torch.linalg.matrix_rank(truncated[key]).item() == 28
    assert torch.linalg.matrix_rank(base.model.layers[0].self_attn.q_proj.weight).item() == 32
    for model in (theirs, ours):
        model.train()
        loss = model(**inputs).logits.pow(2).mean() + model.base_model._get_kasa_loss()
        loss.backward()
    assert abs(ours.base_model._get_kasa_loss().item() - theirs.base_model._get_kasa_loss().item()) < 1e-6
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    assert any("lora_diag" in n for n in grads)
    assert max(max_diff(p.grad, grads[n]) for n, p in ours.named_parameters() if p.requires_grad) < ATOL
    ours.eval()
    expected = theirs.eval()(**inputs).logits
    assert max_diff(ours(**inputs).logits, expected) < ATOL
    ours.merge_adapter()
    assert max_diff(ours(**inputs).logits, expected) < ATOL
    ours.unmerge_adapter()
    assert (
        max(max_diff(_base_weights(ours)[k], v) for k, v in truncated.items()) < ATOL
    )  # back to the truncated W
    assert ours.base_model._get_kasa_loss(["other"]) == 0.0


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_files_both_ways_truncate_the_base_on_loading(tmp_path, low_cpu_mem_usage):
    import peft

    base = tiny_llama()
    inputs = llama_inputs()
    theirs, ours = _pair(base)
    expected = theirs.eval()(**inputs).logits
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    saved = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert sorted(saved) == sorted(load_file(tmp_path / "theirs" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_diag" in saved
    in_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    assert max_diff(in_peft(**inputs).logits, expected) < ATOL
    loaded = peftkit.PeftModel.from_pretrained(
        copy.deepcopy(base), tmp_path / "theirs", low_cpu_mem_usage=low_cpu_mem_usage
    )
    assert isinstance(loaded.peft_config["default"].kasa_config, peftkit.KasaConfig)
    assert max_diff(loaded(**inputs).logits, expected) < ATOL


def test_clear_errors_and_nothing_truncated_when_one_layer_fails():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = peftkit.LoraConfig(
        r=4, target_modules=["q_proj", "k_proj"], rank_pattern={"k_proj": 16}, kasa_config={}
    )  # k_proj is 32 -> 16: r=16 is not below min(16, 32)
    with pytest.raises(ValueError, match=r"KaSA requires `r` \(16\) to be smaller than"):
        peftkit.get_peft_model(model, config)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="fan_in_fan_out"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.LoraConfig(target_modules=["c_attn"], kasa_config={}))
    with pytest.raises(ValueError, match="nn.Linear layers only"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(target_modules=["embed_tokens"], kasa_config={})
        )
    with pytest.raises(ValueError, match=r"\('kasa_config', 'use_dora'\)"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"], kasa_config={}, use_dora=True)
        )
    kasa = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"], kasa_config={}))
    with pytest.raises(ValueError, match="KaSA cannot be combined with adapters that don't use KaSA"):
        kasa.add_adapter("plain", peftkit.LoraConfig(target_modules=["q_proj"]))
    assert "plain" not in kasa.peft_config
    kasa.add_adapter("second", peftkit.LoraConfig(target_modules=["q_proj"], kasa_config={}))


def test_conversion_to_plain_lora_is_refused(tmp_path):
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"], kasa_config={})
    )
    model.save_pretrained(tmp_path / "init")
    with pytest.raises(ValueError, match="KaSA adapters cannot be converted"):
        model.save_pretrained(
            tmp_path / "plain", path_initial_model_for_weight_conversion=str(tmp_path / "init")
        )
    assert not (tmp_path / "plain" / "adapter_config.json").exists()
