"""QA-LoRA (`use_qalora`): peft's group-pooled forward and gradients, on every linear layer; exact merging.

peft 0.21 applies QA-LoRA on GPTQ layers only (elsewhere it silently trains plain LoRA), so its formula is
checked here by attaching peft's own `QALoraLinearVariant` to peft's LoRA layers of the same model.
"""

import copy

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama
from tests.lora_family.helpers import max_diff

import peftkit

ATOL = 1e-5
KWARGS = dict(r=4, target_modules=["q_proj", "v_proj", "down_proj"], use_qalora=True, qalora_group_size=8)


def _peft_qalora(base):
    import peft
    from peft.tuners.lora.variants import QALoraLinearVariant

    config = peft.LoraConfig(**KWARGS)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    for module in model.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            QALoraLinearVariant.init(module, "default", config)
            module.lora_variant["default"] = QALoraLinearVariant()
    return model


def _pair(base):
    theirs = _peft_qalora(base)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**KWARGS))
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def test_pooled_factor_outputs_and_gradients_equal_peft_s_formula():
    base = tiny_llama()
    inputs = llama_inputs()
    theirs, ours = _pair(base)
    layer = ours.base_model.model.model.layers[0].mlp.down_proj
    assert layer.lora_A["default"].weight.shape == (4, 64 // 8)  # (r, in / group)
    for model in (theirs, ours):
        model.train()
        model(**inputs).logits.pow(2).mean().backward()
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    assert max(max_diff(p.grad, grads[n]) for n, p in ours.named_parameters() if p.requires_grad) < ATOL
    expected = theirs.eval()(**inputs).logits
    assert max_diff(ours.eval()(**inputs).logits, expected) < ATOL
    assert max_diff(expected, base(**inputs).logits) > 1e-3


def test_merging_is_exact_and_files_round_trip(tmp_path):
    base = tiny_llama()
    inputs = llama_inputs()
    _, ours = _pair(base)
    expected = ours(**inputs).logits
    ours.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert loaded.peft_config["default"].use_qalora and loaded.peft_config["default"].qalora_group_size == 8
    assert max_diff(loaded(**inputs).logits, expected) < ATOL
    merged = loaded.merge_and_unload()
    assert max_diff(merged(**inputs).logits, expected) < ATOL


def test_gpt2_conv1d_and_clear_errors():
    model = peftkit.get_peft_model(
        tiny_gpt2(), peftkit.LoraConfig(target_modules=["c_attn"], use_qalora=True, qalora_group_size=4)
    )
    perturb_adapter_weights(model)
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = model(input_ids=ids).logits
    model.merge_adapter()  # Conv1D stores (in, out): the expanded delta is transposed
    assert max_diff(model(input_ids=ids).logits, expected) < ATOL
    with pytest.raises(ValueError, match=r"in_features` \(32\) to be divisible by 'qalora_group_size' \(5\)"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"], use_qalora=True, qalora_group_size=5)
        )
    with pytest.raises(ValueError, match="lora_bias"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"], use_qalora=True, lora_bias=True)
        )
    with pytest.raises(ValueError, match=r"\('use_dora', 'use_qalora'\)"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"], use_qalora=True, use_dora=True)
        )
    with pytest.raises(ValueError, match="init_lora_weights='pissa'"):
        peftkit.get_peft_model(
            tiny_llama(),
            peftkit.LoraConfig(target_modules=["q_proj"], use_qalora=True, init_lora_weights="pissa"),
        )
    with pytest.raises(ValueError, match="qalora_group_size must be a positive integer"):
        peftkit.LoraConfig(use_qalora=True, qalora_group_size=0)
    with pytest.raises(ValueError, match="linear layers only"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(target_modules=["embed_tokens"], use_qalora=True)
        )
