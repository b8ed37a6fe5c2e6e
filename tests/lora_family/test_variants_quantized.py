"""The LoRA variants over a bitsandbytes 4-bit base: what reads only the adapter (VeLoRA, MonteCLoRA, QA-LoRA)
or the dequantized weight (MiCA) computes what it computes over the dequantized model; KaSA, which rewrites
the base weight, is refused naming the field."""

import copy

import pytest
from tests.conftest import llama_inputs, perturb_adapter_weights
from tests.lora_family.helpers import max_diff
from tests.quantization.helpers import quantizable_llama, quantize_linears
from torch import nn

import peftkit
from peftkit.tuners._bnb import dequantized_weight as dequantize_bnb_weight

ATOL = 1e-5
TARGETS = ["q_proj", "v_proj"]


def _dequantized(model: nn.Module) -> nn.Module:
    """A float copy of `model` whose bitsandbytes layers hold their dequantized weights."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "Linear4bit":
                linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                linear.weight.data = dequantize_bnb_weight(child).float()
                setattr(parent, name, linear)
    return model


@pytest.mark.parametrize(
    "variant",
    [
        {"velora_config": {"num_groups": 4}},
        {"monteclora_config": {}},
        {"use_qalora": True},
        {"init_lora_weights": "mica"},
    ],
    ids=["velora", "monteclora", "qalora", "mica"],
)
def test_variant_over_4bit_equals_the_dequantized_model(variant):
    quantized = quantize_linears(quantizable_llama(), bits=4)
    reference_base = _dequantized(quantized)
    inputs = llama_inputs()
    ours = peftkit.get_peft_model(
        copy.deepcopy(quantized), peftkit.LoraConfig(r=4, target_modules=TARGETS, **variant)
    )
    reference = peftkit.get_peft_model(
        reference_base, peftkit.LoraConfig(r=4, target_modules=TARGETS, **variant)
    )
    adapter = {k: v for k, v in ours.state_dict().items() if "lora_" in k}
    if "init_lora_weights" in variant:  # MiCA's B: the minor singular vectors of the dequantized weight
        assert max(max_diff(v, reference.state_dict()[k]) for k, v in adapter.items()) < ATOL
    perturb_adapter_weights(ours)
    reference.load_state_dict({k: v for k, v in ours.state_dict().items() if "lora_" in k}, strict=False)
    ours.eval()
    reference.eval()
    assert max_diff(ours(**inputs).logits, reference(**inputs).logits) < ATOL
    ours.train()
    ours(**inputs).logits.pow(2).mean().backward()
    assert all(p.grad is not None for p in ours.parameters() if p.requires_grad)


def test_kasa_over_4bit_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"KaSA rewrites the base weight [^\n]* \(quantized\)"):
        peftkit.get_peft_model(
            quantize_linears(quantizable_llama(), bits=4),
            peftkit.LoraConfig(target_modules=TARGETS, kasa_config={}),
        )
