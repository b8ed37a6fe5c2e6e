"""LoRA and DoRA over bitsandbytes layers (QLoRA) on the CPU, checked against peft on the same quantized base.

bitsandbytes quantizes deterministically, so a deep copy of one quantized model gives both libraries the
same packed weights: forward, merge and unmerge are compared exactly (tolerance 1e-6, fp32 compute) or
to the last bit (bf16/fp16 bases). Layers are 64 wide: bitsandbytes' CPU inference kernel (used in eval
mode on CPUs with AVX512-BF16) repacks 4-bit weights and needs widths divisible by the block size (64).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights
from tests.quantization.helpers import quantizable_llama, quantize_linears

import peftkit
from peftkit.utils.quantization import merge_and_unload_dequantized
from peftkit.utils.warnings import PeftWarning

TARGETS = ["q_proj", "v_proj", "down_proj"]
CASES = {
    "nf4": dict(bits=4, quant_type="nf4"),
    "fp4-double-quant": dict(bits=4, quant_type="fp4", double_quant=True),
    "int8": dict(bits=8),
}


def _pair(case: dict, use_dora: bool = False, dtype=torch.float32, compute_dtype=torch.float32):
    """peft and peftkit LoRA on copies of one quantized tiny Llama, with peft's perturbed adapter copied over."""
    import peft

    base = quantize_linears(quantizable_llama().to(dtype), compute_dtype=compute_dtype, **case)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(target_modules=TARGETS, use_dora=use_dora)
    )
    ours = peftkit.get_peft_model(base, peftkit.LoraConfig(target_modules=TARGETS, use_dora=use_dora))
    perturb_adapter_weights(theirs, scale=0.3)
    adapter = {k: v for k, v in theirs.state_dict().items() if "lora_" in k}
    result = ours.load_state_dict(adapter, strict=False)
    assert not result.unexpected_keys
    # train mode (no dropout configured, so still deterministic): bitsandbytes keeps its plain 4-bit
    # format there, which peft's DoRA and merge read (they misread the CPU-repacked one, see the last test)
    return theirs.train(), ours.train()


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_forward_equals_peft(case, use_dora):
    theirs, ours = _pair(CASES[case], use_dora)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == ("Linear4bit" if CASES[case]["bits"] == 4 else "Linear8bitLt")
    assert type(layer).__module__ == "peftkit.tuners.lora.bnb"
    inputs = llama_inputs()
    torch.testing.assert_close(_logits(ours, inputs), _logits(theirs, inputs), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_base_with_fp32_adapters_equals_peft(dtype):
    theirs, ours = _pair(CASES["nf4"], dtype=dtype, compute_dtype=dtype)
    assert {p.dtype for n, p in ours.named_parameters() if "lora_" in n} == {torch.float32}
    inputs = llama_inputs()
    got, expected = _logits(ours, inputs), _logits(theirs, inputs)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, atol=0, rtol=0)  # same operations in the same order


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("case", ["nf4", "int8"])
def test_merge_requantizes_like_peft_and_warns(case, use_dora):
    theirs, ours = _pair(CASES[case], use_dora)
    inputs = llama_inputs()
    unmerged = _logits(ours, inputs)
    with ours.disable_adapter():
        base_only = _logits(ours, inputs)
    with pytest.warns(PeftWarning, match="rounded to the"):
        ours.merge_adapter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.merge_adapter()
    merged = _logits(ours, inputs)
    torch.testing.assert_close(merged, _logits(theirs, inputs), atol=1e-6, rtol=0)
    assert type(ours.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__module__.startswith(
        "bitsandbytes"
    )
    # the merge rounds (outputs change), but it did merge the adapter: closer to the adapted outputs than
    # the base model's are
    assert 0 < (merged - unmerged).abs().max() < 0.5 * (base_only - unmerged).abs().max()
    with pytest.warns(PeftWarning, match="requantizes"):
        ours.unmerge_adapter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.unmerge_adapter()
    torch.testing.assert_close(_logits(ours, inputs), _logits(theirs, inputs), atol=1e-6, rtol=0)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("case", ["nf4", "int8"])
def test_merge_and_unload_dequantized_gives_a_plain_model_with_the_same_outputs(case, use_dora):
    _, ours = _pair(CASES[case], use_dora)
    inputs = llama_inputs()
    expected = _logits(ours, inputs)
    plain = merge_and_unload_dequantized(ours)
    kinds = {type(m).__module__.split(".")[0] for m in plain.modules()}
    assert "bitsandbytes" not in kinds and "peftkit" not in kinds
    assert not getattr(plain, "is_loaded_in_4bit", False) and not getattr(plain, "is_loaded_in_8bit", False)
    assert plain.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    torch.testing.assert_close(_logits(plain, inputs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_training_updates_only_lora_and_lowers_the_loss(case):
    _, ours = _pair(CASES[case])
    ours.train()
    inputs = llama_inputs(batch=4, length=8)
    labels = inputs["input_ids"].clone()
    optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = ours(**inputs, labels=labels).loss
        loss.backward()
        if not losses:
            with_grad = {n for n, p in ours.named_parameters() if p.grad is not None}
            assert with_grad and all("lora_" in n for n in with_grad)
            assert with_grad == {n for n, p in ours.named_parameters() if p.requires_grad}
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses


@pytest.mark.parametrize("case", ["nf4", "int8"])
def test_save_load_round_trip_and_peft_interop(case, tmp_path):
    import peft

    _, ours = _pair(CASES[case])
    inputs = llama_inputs()
    expected = _logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    fresh = quantize_linears(quantizable_llama(), **CASES[case])
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(fresh), tmp_path).train()
    torch.testing.assert_close(_logits(loaded, inputs), expected, atol=1e-6, rtol=0)
    in_peft = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).train()
    torch.testing.assert_close(_logits(in_peft, inputs), expected, atol=1e-6, rtol=0)


def test_trainable_parameter_count_unpacks_4bit_weights():
    theirs, ours = _pair(CASES["nf4"])
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


def _repack_for_cpu_kernel(layer) -> None:
    """What bitsandbytes does to a 4-bit layer on its first eval forward without grad on a CPU with
    AVX512-BF16 (done here by hand, so that the test means the same on every CPU)."""
    import bitsandbytes as bnb

    layer.weight.data, layer.weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state
    )
    assert layer.weight.quant_state.packing_format_for_cpu


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_repacked_4bit_weights_merge_as_dequantize_merge_requantize(use_dora):
    """bitsandbytes' CPU kernel repacks 4-bit weights (other byte order, bf16 block scales). DoRA's weight
    norm and merging must read that format through the inverse repacking: peftkit does, and merges to the
    numbers of the reference (dequantize, merge in fp32, requantize with the layer's settings). peft 0.21
    reads the repacked bytes as the plain format: its weight is then off by more than the weight's own
    size, which is the 0.13 (DoRA forward) and 0.39 (merge) gap between the libraries on such CPUs."""
    import inspect

    import bitsandbytes as bnb
    from peft.utils.integrations import dequantize_bnb_weight

    from peftkit.tuners._bnb import dequantized_weight, requantized_weight

    if not hasattr(bnb.functional, "_convert_weight_packed_for_cpu"):  # bitsandbytes < 0.49 (the floor)
        assert "packing_format_for_cpu" not in inspect.getsource(bnb.nn.Linear4bit.forward)  # never repacks
        return

    torch.manual_seed(0)
    holder = quantize_linears(torch.nn.Sequential(torch.nn.Linear(64, 64)), skip=())
    ours = peftkit.get_peft_model(holder, peftkit.LoraConfig(target_modules=["0"], use_dora=use_dora))
    perturb_adapter_weights(ours, scale=0.3)
    layer = ours.base_model.model[0]
    plain_weight = dequantized_weight(layer.get_base_layer())
    _repack_for_cpu_kernel(layer.get_base_layer())
    # the numbers the repacked layer computes with: its block scales are now bf16 (a 2^-8 rounding)
    true_weight = layer._dense_base_weight()  # what DoRA's norm and merging read
    size = plain_weight.abs().max().item()
    torch.testing.assert_close(true_weight, plain_weight, atol=1e-2 * size, rtol=0)
    misread = dequantize_bnb_weight(
        layer.get_base_layer().weight, state=layer.get_base_layer().weight.quant_state
    )
    assert (misread.float() - true_weight).abs().max() > size  # peft 0.21's reading

    reference = copy.deepcopy(layer)
    reference.base_layer = torch.nn.Linear(64, 64)
    with torch.no_grad():
        reference.base_layer.weight.copy_(true_weight)
        reference.base_layer.bias.copy_(layer.get_base_layer().bias)
    reference.merge()
    expected_layer = copy.deepcopy(layer.get_base_layer())
    expected_layer.weight = requantized_weight(expected_layer, reference.base_layer.weight.data)
    with pytest.warns(PeftWarning, match="rounded to the"):
        layer.merge()
    assert torch.equal(dequantized_weight(layer.get_base_layer()), dequantized_weight(expected_layer))
