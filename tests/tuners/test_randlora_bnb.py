"""RandLoRA over bitsandbytes layers (8-bit and 4-bit, quantized on the CPU), against peft on the same
quantized base: the forward equals peft's; merging requantizes (with a warning) close to the unmerged
outputs; training lowers the loss."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights
from tests.quantization.helpers import quantizable_llama, quantize_linears
from tests.tuners import method_checks as checks

import peftkit
from peftkit.utils.warnings import PeftWarning

CONFIG = {
    "r": 8,
    "target_modules": ["q_proj", "v_proj", "down_proj"],
    "init_weights": False,
    "randlora_alpha": 16,
}
CASES = {"int8": {"bits": 8}, "nf4": {"bits": 4, "quant_type": "nf4"}}


def _pair(case: dict):
    """peft and peftkit RandLoRA on copies of one quantized tiny Llama, peft's perturbed adapter copied over."""
    base = quantize_linears(quantizable_llama(), **case)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.RandLoraConfig(**CONFIG))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.RandLoraConfig(**CONFIG))
    perturb_adapter_weights(theirs, scale=0.3)
    adapter = {k: v for k, v in theirs.state_dict().items() if "randlora_" in k}
    assert not ours.load_state_dict(adapter, strict=False).unexpected_keys
    # train mode (no dropout configured): bitsandbytes keeps its plain 4-bit format there
    return base.train(), theirs.train(), ours.train()


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_forward_equals_peft(case):
    base, theirs, ours = _pair(CASES[case])
    layer = ours.base_model.model.model.layers[0].mlp.down_proj
    assert type(layer).__name__ == ("Linear4bit" if CASES[case]["bits"] == 4 else "Linear8bitLt")
    assert type(layer).__module__ == "peftkit.tuners.randlora.bnb"
    inputs = llama_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).logits
        assert (expected - base(**inputs).logits).abs().max() > 1e-2
        checks.assert_close(ours(**inputs).logits, expected, 1e-6, f"{case} forward")


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_merge_requantizes_close_to_the_unmerged_outputs_and_warns(case):
    """The merged weight is rounded to the quantization grid once more: the merged outputs stay within a
    quarter of the adapter's own effect (a wrong delta would move them by about the whole effect)."""
    base, _, ours = _pair(CASES[case])
    inputs = llama_inputs()
    with torch.no_grad():
        unmerged, base_out = ours(**inputs).logits, base(**inputs).logits
        effect = (unmerged - base_out).abs().max().item()
        with pytest.warns(PeftWarning, match=f"{CASES[case]['bits']}-bit quantized layer requantizes"):
            ours.merge_adapter()
        checks.assert_close(ours(**inputs).logits, unmerged, 0.3 * effect, "merged")
        ours.unmerge_adapter()
        checks.assert_close(ours(**inputs).logits, unmerged, 0.3 * effect, "unmerged")


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_training_lowers_the_loss(case):
    base = quantize_linears(quantizable_llama(), **CASES[case])
    model = peftkit.get_peft_model(base, peftkit.RandLoraConfig(**CONFIG)).train()
    inputs = llama_inputs()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all("randlora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_randlora_exports_the_bitsandbytes_layers_at_peft_s_path():
    from peftkit.tuners.randlora import Linear4bit, Linear8bitLt

    assert issubclass(Linear4bit, peftkit.tuners.randlora.RandLoraLayer)
    assert issubclass(Linear8bitLt, peftkit.tuners.randlora.RandLoraLayer)
