"""LoRA over torchao (int8 weight-only) and HQQ (4-bit) bases, with the real packages, on the CPU.

These tests need the `torchao` and `hqq` extras: they carry the `backends` marker, which the default
run deselects; CI's newest environment installs the extras and runs them (`pytest -m "not demo"`, see
.ci/run). Without the packages they fail on import, they never skip.

torchao's model comes through transformers (`TorchAoConfig(Int8WeightOnlyConfig())`), as users load it;
transformers 5 no longer loads HQQ models, so HQQ's layers are built with hqq itself (`HQQLinear`).
Both kernels dequantize and multiply in fp32 here, so the dequantized reference (the same adapter on a
plain copy holding the dequantized weights) and peft agree to 1e-5.
"""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights
from tests.quantization.helpers import dequantized_copy, quantizable_llama
from torch import nn

import peftkit
from peftkit.tuners._linear_kind import UnsupportedLayerError
from peftkit.tuners._quantized import dense_weight, quantization_backend, store_weight
from peftkit.utils.quantization import merge_and_unload_dequantized
from peftkit.utils.warnings import PeftWarning

pytestmark = pytest.mark.backends

TARGETS = ["q_proj", "v_proj", "down_proj"]
ATOL = 1e-5


def torchao_llama(tmp_path):
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    quantizable_llama().save_pretrained(tmp_path / "plain")
    config = TorchAoConfig(Int8WeightOnlyConfig())
    return AutoModelForCausalLM.from_pretrained(
        tmp_path / "plain", quantization_config=config, device_map="cpu"
    )


def hqq_llama(tmp_path):
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    model = quantizable_llama()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and name != "lm_head":
                settings = BaseQuantizeConfig(nbits=4, group_size=64)
                setattr(parent, name, HQQLinear(child, settings, compute_dtype=torch.float32, device="cpu"))
    return model


BACKENDS = {"torchao": (torchao_llama, "TorchaoLoraLinear"), "hqq": (hqq_llama, "HqqLoraLinear")}


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _pair(backend, tmp_path, use_dora=False):
    """(base, peft's LoRA, peftkit's LoRA with peft's perturbed adapter)."""
    base = BACKENDS[backend][0](tmp_path)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(target_modules=TARGETS, use_dora=use_dora)
    )
    perturb_adapter_weights(theirs, scale=0.3)
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(target_modules=TARGETS, use_dora=use_dora)
    )
    adapter = {k: v for k, v in theirs.state_dict().items() if ".lora_" in k}
    assert not ours.load_state_dict(adapter, strict=False).unexpected_keys
    return base, theirs.eval(), ours.eval()


def _reference(base, ours, use_dora=False):
    reference = peftkit.get_peft_model(
        dequantized_copy(base), peftkit.LoraConfig(target_modules=TARGETS, use_dora=use_dora)
    )
    peftkit.set_peft_model_state_dict(reference, peftkit.get_peft_model_state_dict(ours))
    return reference.eval()


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_forward_equals_peft_and_the_dequantized_reference(backend, use_dora, tmp_path):
    base, theirs, ours = _pair(backend, tmp_path, use_dora)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == BACKENDS[backend][1]
    assert (
        quantization_backend(layer.get_base_layer()).family == {"torchao": "torchao", "hqq": "HQQ"}[backend]
    )
    inputs = llama_inputs()
    got = _logits(ours, inputs)
    with ours.disable_adapter():
        assert (got - _logits(ours, inputs)).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(got, _logits(theirs, inputs), atol=ATOL, rtol=0)
    torch.testing.assert_close(got, _logits(_reference(base, ours, use_dora), inputs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_training_updates_only_lora_and_lowers_the_loss(backend, tmp_path):
    """(The fused LoRA training node, which reads a plain base weight, steps aside for these layers: a
    torchao `Int8Tensor` has no transpose.)"""
    base = BACKENDS[backend][0](tmp_path)
    inputs = llama_inputs(batch=4, length=8)
    labels = inputs["input_ids"].clone()
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(target_modules=TARGETS))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad and all(".lora_" in n for n in with_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_files_move_both_ways_with_peft(backend, tmp_path):
    base, theirs, ours = _pair(backend, tmp_path)
    inputs = llama_inputs()
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs").eval()
    torch.testing.assert_close(_logits(loaded, inputs), _logits(theirs, inputs), atol=ATOL, rtol=0)
    perturb_adapter_weights(ours, seed=4)
    ours.save_pretrained(tmp_path / "ours")
    in_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(_logits(in_peft, inputs), _logits(ours, inputs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_merge_requantizes_as_the_reference_and_as_peft(backend, tmp_path):
    """Merged weights are the reference's merged weights requantized with each layer's settings (the
    dequantized numbers are compared exactly); the merged model gives peft's merged logits."""
    base, theirs, ours = _pair(backend, tmp_path)
    inputs = llama_inputs()
    unmerged = _logits(ours, inputs)
    reference = _reference(base, ours)
    with pytest.warns(PeftWarning, match="requantizes the merged weight"):
        ours.merge_adapter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.merge_adapter()
        reference.merge_adapter()
    merged = _logits(ours, inputs)
    torch.testing.assert_close(merged, _logits(theirs, inputs), atol=ATOL, rtol=0)
    assert 0 < (merged - unmerged).abs().max() < 0.5  # rounded to the grid, but merged
    plain = dict(reference.named_modules())
    checked = 0
    for name, module in ours.named_modules():
        if name.endswith(".base_layer") and quantization_backend(module) is not None:
            adapted = name.removesuffix(".base_layer")
            merged_numbers = plain[adapted].get_base_layer().weight.data
            original = base.get_submodule(adapted.removeprefix("base_model.model."))  # same settings
            requantized = store_weight(copy.deepcopy(original), merged_numbers)
            assert torch.equal(dense_weight(module), dense_weight(requantized)), name
            checked += 1
    assert checked == 6  # q, v, down in both layers
    with pytest.warns(PeftWarning, match="requantizes the weight"):
        ours.unmerge_adapter()


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_merge_and_unload_dequantized_gives_a_plain_model(backend, tmp_path):
    _, _, ours = _pair(backend, tmp_path)
    inputs = llama_inputs()
    expected = _logits(ours, inputs)
    plain = merge_and_unload_dequantized(ours)
    assert not any(quantization_backend(m) for m in plain.modules())
    assert type(plain.model.layers[0].self_attn.q_proj) is nn.Linear
    torch.testing.assert_close(_logits(plain, inputs), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_other_methods_refuse_these_backends_by_name(backend, tmp_path):
    base = BACKENDS[backend][0](tmp_path)
    name = {"torchao": "torchao", "hqq": "HQQ"}[backend]
    with pytest.raises(
        UnsupportedLayerError,
        match=rf"IA3 on {name}-quantized layers .* adapts layers quantized by bitsandbytes\.",
    ):
        peftkit.get_peft_model(base, peftkit.IA3Config(target_modules=["k_proj"], feedforward_modules=[]))
