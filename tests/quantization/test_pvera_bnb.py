"""PVeRA over bitsandbytes layers on the CPU, against peft on the same quantized base (bitsandbytes
quantizes deterministically, so copies of one quantized model give both libraries the same packed weights).

Forward passes are compared in eval (the mean) and in training (per-layer seeded noise) to 1e-6 (fp32
compute). peft's 8-bit merge is compared exactly; its 4-bit merge does not run on this bitsandbytes (the
requantized weight is left marked as already quantized), so peftkit's is checked against the unmerged
model instead, within the 4-bit rounding of the merged weight.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights
from tests.quantization.helpers import quantizable_llama, quantize_linears

import peftkit
from peftkit.utils.warnings import PeftWarning

CONFIG = {"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"], "generator_seed": 3}
CASES = {
    "nf4": dict(bits=4, quant_type="nf4"),
    "fp4-double-quant": dict(bits=4, quant_type="fp4", double_quant=True),
    "int8": dict(bits=8),
}


def _pair(case: dict):
    import peft

    base = quantize_linears(quantizable_llama(), **case)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PveraConfig(**CONFIG))
    ours = peftkit.get_peft_model(base, peftkit.PveraConfig(**CONFIG))
    perturb_adapter_weights(theirs, scale=0.3)
    result = ours.load_state_dict(
        {k: v for k, v in theirs.state_dict().items() if "pvera_" in k}, strict=False
    )
    assert not result.unexpected_keys
    return theirs, ours


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_forward_equals_peft_in_eval_and_training(case):
    theirs, ours = _pair(CASES[case])
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == ("Linear4bit" if CASES[case]["bits"] == 4 else "Linear8bitLt")
    assert type(layer).__module__ == "peftkit.tuners.pvera.bnb"
    inputs = llama_inputs()
    for mode in ("train", "eval", "train"):
        getattr(theirs, mode)(), getattr(ours, mode)()
        torch.testing.assert_close(_logits(ours, inputs), _logits(theirs, inputs), atol=1e-6, rtol=0)


def test_int8_merge_and_unmerge_equal_peft():
    theirs, ours = _pair(CASES["int8"])
    inputs = llama_inputs()
    theirs.train(), ours.train()  # the seeded noise keeps training forwards comparable; merged ones use none
    with pytest.warns(PeftWarning, match="8-bit quantized layer"):
        ours.merge_adapter()
    theirs.merge_adapter()
    torch.testing.assert_close(_logits(ours, inputs), _logits(theirs, inputs), atol=1e-6, rtol=0)
    ours.unmerge_adapter(), theirs.unmerge_adapter()
    torch.testing.assert_close(_logits(ours, inputs), _logits(theirs, inputs), atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["nf4", "fp4-double-quant"])
def test_4bit_merge_writes_the_quantized_sum(case):
    """The merged 4-bit weight is exactly bitsandbytes' 4-bit rounding of (dequantized weight + the mean's
    weight change), quantized with the layer's own settings."""
    import bitsandbytes as bnb

    from peftkit.tuners._bnb import dequantized_weight

    _, ours = _pair(CASES[case])
    ours.eval()
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    old = layer.base_layer.weight
    exact_sum = dequantized_weight(layer.base_layer) + layer.get_delta_weight("default")
    packed, state = bnb.functional.quantize_4bit(
        exact_sum,
        blocksize=old.blocksize,
        compress_statistics=old.compress_statistics,
        quant_type=old.quant_type,
    )
    with pytest.warns(PeftWarning, match="4-bit quantized layer"):
        ours.merge_adapter()
    assert torch.equal(dequantized_weight(layer.base_layer), bnb.functional.dequantize_4bit(packed, state))
    merged_model = ours.merge_and_unload()
    assert not any(isinstance(m, peftkit.tuners.tuners_utils.BaseTunerLayer) for m in merged_model.modules())
