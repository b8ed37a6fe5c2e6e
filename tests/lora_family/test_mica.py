"""MiCA (`init_lora_weights="mica"`): peft's factors (minor singular vectors in B, A = 0), B frozen for
good, same outputs and files."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama, trainable_names
from tests.lora_family.helpers import max_diff, train_steps

import peftkit

ATOL = 1e-6
TARGETS = ["q_proj", "v_proj", "down_proj", "embed_tokens"]


def _pair(base):
    import peft

    kwargs = dict(r=4, target_modules=TARGETS, init_lora_weights="mica")
    return (
        peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs)),
        peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**kwargs)),
    )


def test_factors_trainable_tensors_and_outputs_equal_peft():
    base = tiny_llama()
    inputs = llama_inputs()
    theirs, ours = _pair(base)
    assert trainable_names(ours) == trainable_names(theirs)
    assert not any("lora_B" in n or "lora_embedding_B" in n for n in trainable_names(ours))
    their_state = theirs.state_dict()
    assert max(max_diff(v, their_state[k]) for k, v in ours.state_dict().items()) < ATOL
    q_proj = ours.base_model.model.model.layers[0].self_attn.q_proj
    U = torch.linalg.svd(base.model.layers[0].self_attn.q_proj.weight)[0]
    assert max_diff(q_proj.lora_B["default"].weight, U[:, -4:]) < 1e-5  # the 4 minor directions
    assert q_proj.lora_A["default"].weight.abs().sum() == 0
    assert max_diff(ours(**inputs).logits, base(**inputs).logits) < ATOL  # a no-op at the start
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    assert max_diff(ours(**inputs).logits, theirs(**inputs).logits) < ATOL


def test_training_moves_a_only_whatever_reactivates_the_adapter(tmp_path):
    base = tiny_llama()
    inputs = llama_inputs()
    _, ours = _pair(base)
    frozen = {n: p.clone() for n, p in ours.named_parameters() if "lora_B" in n or "lora_embedding_B" in n}
    train_steps(ours, inputs)
    ours.disable_adapter_layers()
    ours.enable_adapter_layers()
    ours.set_adapter("default")
    train_steps(ours, inputs)
    params = dict(ours.named_parameters())
    assert all(torch.equal(params[n], v) and not params[n].requires_grad for n, v in frozen.items())
    q_proj = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.lora_A["default"].weight.abs().sum() > 0  # A trained
    ours.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert trainable_names(loaded) == trainable_names(ours)  # B stays frozen after a trainable load


def test_files_both_ways_and_merge(tmp_path):
    import peft

    base = tiny_llama()
    inputs = llama_inputs()
    theirs, ours = _pair(base)
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    expected = theirs(**inputs).logits
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    assert sorted(load_file(tmp_path / "ours" / "adapter_model.safetensors")) == sorted(
        load_file(tmp_path / "theirs" / "adapter_model.safetensors")
    )
    in_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    assert max_diff(in_peft(**inputs).logits, expected) < ATOL
    for low_cpu_mem_usage in (False, True):
        loaded = peftkit.PeftModel.from_pretrained(
            copy.deepcopy(base), tmp_path / "theirs", low_cpu_mem_usage=low_cpu_mem_usage
        )
        assert max_diff(loaded(**inputs).logits, expected) < ATOL
    ours.merge_adapter()
    assert max_diff(ours(**inputs).logits, expected) < 1e-5


def test_clear_errors():
    with pytest.raises(ValueError, match="MiCA requires `r` <= min"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(r=20, target_modules=["k_proj"], init_lora_weights="mica")
        )
    from tests.conftest import conv_net

    with pytest.raises(ValueError, match="linear layers only"):
        peftkit.get_peft_model(
            conv_net(), peftkit.LoraConfig(target_modules=["conv2d"], init_lora_weights="mica")
        )
