"""LoftQ: `init_lora_weights="loftq"` and `replace_lora_weights_loftq` on a bitsandbytes 4-bit base (CPU).

peft's LoftQ needs CUDA, so the oracle here is the definition: the adapter starts at the rank-r
approximation of the quantization error, so `Q + s B A` is closer to `W` than `Q` alone, and the stored
`Q` is exactly representable in the quantized format.
"""

import copy

import pytest
import torch
from tests.conftest import llama_inputs
from tests.lora_family.helpers import max_diff
from tests.quantization.helpers import quantizable_llama, quantize_linears

import peftkit
from peftkit.tuners.lora.loftq import LoftQConfig, quantize_dequantize, replace_lora_weights_loftq

pytest.importorskip("bitsandbytes")


def _weight_errors(model, base, adapter="default"):
    """(||W - Q - s B A||, ||W - Q||) summed over the adapted layers (dequantized Q)."""
    with_adapter = without = 0.0
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or adapter not in module.lora_A:
            continue
        W = base.get_submodule(name.removeprefix("base_model.model.")).weight.float()
        Q = module._dense_base_weight().float()
        delta = module.scaling[adapter] * module.lora_B[adapter].weight @ module.lora_A[adapter].weight
        with_adapter += (W - Q - delta).norm().item()
        without += (W - Q).norm().item()
    return with_adapter, without


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("iterations", [1, 3])
def test_init_loftq_reduces_quantization_error(bits, iterations):
    base = quantizable_llama()
    inputs = llama_inputs()
    model = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules="all-linear",
            init_lora_weights="loftq",
            loftq_config=LoftQConfig(loftq_bits=bits, loftq_iter=iterations),
        ),
    )
    with_adapter, without = _weight_errors(model, base)
    assert with_adapter < 0.9 * without
    expected = base(**inputs).logits
    error = max_diff(model(**inputs).logits, expected)
    with model.disable_adapter():
        quantized_error = max_diff(model(**inputs).logits, expected)
    assert error < quantized_error  # closer to the unquantized model than the quantized base alone
    assert error < (0.2 if bits == 4 else 0.01)  # init equals the base up to what quantization loses
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    stored = layer.base_layer.weight
    assert max_diff(quantize_dequantize(stored, bits), stored) == 0.0  # Q is exactly representable


def test_replace_lora_weights_loftq_on_a_4bit_model(tmp_path):
    base = quantizable_llama()
    base.save_pretrained(tmp_path / "base")  # model.safetensors: the unquantized weights
    inputs = llama_inputs()
    expected = base(**inputs).logits
    quantized = quantize_linears(copy.deepcopy(base), bits=4)
    model = peftkit.get_peft_model(
        quantized, peftkit.LoraConfig(r=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with model.disable_adapter():
        quantized_error = max_diff(model(**inputs).logits, expected)
    seen = []
    replace_lora_weights_loftq(
        model, model_path=str(tmp_path / "base"), callback=lambda m, name: seen.append(name) or True
    )
    assert len(seen) == 6
    with_adapter, without = _weight_errors(model, base)
    assert with_adapter < 0.9 * without
    assert max_diff(model(**inputs).logits, expected) < quantized_error


def test_replace_callback_can_refuse_and_errors(tmp_path):
    base = quantizable_llama()
    base.save_pretrained(tmp_path / "base")
    model = peftkit.get_peft_model(
        quantize_linears(copy.deepcopy(base), bits=4), peftkit.LoraConfig(r=8, target_modules=["q_proj"])
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    replace_lora_weights_loftq(model, model_path=str(tmp_path / "base"), callback=lambda m, name: False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_" in n)
    plain = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(r=8, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="bitsandbytes-quantized"):
        replace_lora_weights_loftq(plain, model_path=str(tmp_path / "base"))
    with pytest.raises(ValueError, match="4 or 8"):
        peftkit.get_peft_model(
            copy.deepcopy(base),
            peftkit.LoraConfig(
                r=8, target_modules=["q_proj"], init_lora_weights="loftq", loftq_config={"loftq_bits": 2}
            ),
        )
    with pytest.raises(ValueError, match="unquantized model"):
        peftkit.get_peft_model(
            quantize_linears(copy.deepcopy(base), bits=4),
            peftkit.LoraConfig(r=8, target_modules=["q_proj"], init_lora_weights="loftq"),
        )
