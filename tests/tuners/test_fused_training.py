"""The fused LoRA training node gives the op-by-op formula's outputs and gradients (and peft's)."""

from collections import Counter

import pytest
import torch
from tests.conftest import (
    llama_inputs,
    make_pair,
    require_native_kernels,
    tiny_gpt2,
    tiny_llama,
    torch_threads,
)
from torch import nn

from peftkit import LoraConfig, get_peft_model
from peftkit.tuners import _masked_lowrank
from peftkit.tuners.lora import fast_paths

ATOL = 1e-5


def _loss_and_grads(model, seed=0):
    """Training-mode loss and the gradients of every trainable tensor and of the input embeddings."""
    model.train()
    model.zero_grad(set_to_none=True)
    inputs = llama_inputs()
    embeds = model.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_()
    torch.manual_seed(seed)  # the same dropout masks in every run
    out = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=inputs["input_ids"])
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), grads, embeds.grad


def _unfused(monkeypatch):
    monkeypatch.setattr(fast_paths, "fused_training_applies", lambda *args: False)


@pytest.mark.parametrize("dropout", [0.0, 0.1, "torch"])
def test_fused_equals_op_by_op(monkeypatch, dropout):
    """No dropout, peftkit's dropout (mask applied inside the node), and any other dropout module (applied
    before the node, with its own gradient input)."""
    rate = 0.1 if dropout == "torch" else dropout
    _, _, ours = make_pair(tiny_llama, {"target_modules": "all-linear", "lora_dropout": rate})
    if dropout == "torch":
        for module in ours.modules():
            if hasattr(module, "lora_dropout"):
                module.lora_dropout["default"] = nn.Dropout(rate)
    calls = []
    original = fast_paths.fused_training_forward
    monkeypatch.setattr(fast_paths, "fused_training_forward", lambda *a: calls.append(1) or original(*a))
    fused = _loss_and_grads(ours)
    assert calls, "the fused node was not used"
    _unfused(monkeypatch)
    plain = _loss_and_grads(ours)
    torch.testing.assert_close(fused[0], plain[0], atol=ATOL, rtol=ATOL)
    assert fused[1].keys() == plain[1].keys()
    for name in fused[1]:
        torch.testing.assert_close(fused[1][name], plain[1][name], atol=ATOL, rtol=ATOL, msg=name)
    torch.testing.assert_close(fused[2], plain[2], atol=ATOL, rtol=ATOL)


def test_gpt2_conv1d_layers_fused_equal_op_by_op(monkeypatch):
    """transformers' Conv1D stores the weight transposed; the node reads it as (in, out)."""
    _, _, ours = make_pair(tiny_gpt2, {"target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True})
    layer = ours.train().base_model.model.transformer.h[0].attn.c_attn
    assert fast_paths.fused_training_applies(layer, ["default"], torch.randn(2, 3, 32), (), {})
    fused = _loss_and_grads(ours)
    _unfused(monkeypatch)
    plain = _loss_and_grads(ours)
    torch.testing.assert_close(fused[0], plain[0], atol=ATOL, rtol=ATOL)
    for name in fused[1]:
        torch.testing.assert_close(fused[1][name], plain[1][name], atol=ATOL, rtol=ATOL, msg=name)
    torch.testing.assert_close(fused[2], plain[2], atol=ATOL, rtol=ATOL)


def test_gradients_equal_peft():
    _, theirs, ours = make_pair(tiny_llama, {"target_modules": ["q_proj", "v_proj", "down_proj"]})
    their_logits, their_grads, their_input_grad = _loss_and_grads(theirs)
    our_logits, our_grads, our_input_grad = _loss_and_grads(ours)
    torch.testing.assert_close(our_logits, their_logits, atol=ATOL, rtol=ATOL)
    assert our_grads.keys() == their_grads.keys()
    for name in our_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], atol=ATOL, rtol=ATOL, msg=name)
    torch.testing.assert_close(our_input_grad, their_input_grad, atol=ATOL, rtol=ATOL)


def _layer(**config):
    model = get_peft_model(nn.Sequential(nn.Linear(8, 4)), LoraConfig(target_modules=["0"], **config))
    return model.train(), model.base_model.model[0]


def test_applies_only_where_the_fused_node_is_exact():
    x = torch.randn(3, 8)
    model, layer = _layer()
    assert fast_paths.fused_training_applies(layer, ["default"], x, (), {})
    assert not fast_paths.fused_training_applies(layer, ["default"], x.double(), (), {})  # would need a cast
    with torch.no_grad():  # inference has its own fast path
        assert not fast_paths.fused_training_applies(layer, ["default"], x, (), {})
    model.eval()
    assert not fast_paths.fused_training_applies(layer, ["default"], x, (), {})
    model.train()
    handle = layer.base_layer.register_forward_hook(lambda *a: None)
    assert not fast_paths.fused_training_applies(layer, ["default"], x, (), {})  # hooks must still run
    handle.remove()
    layer.base_layer.bias.requires_grad_(True)  # a trained bias needs its gradient
    assert not fast_paths.fused_training_applies(layer, ["default"], x, (), {})
    _, dora = _layer(use_dora=True)
    assert not fast_paths.fused_training_applies(dora, ["default"], x, (), {})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast_paths.fused_training_applies(_layer()[1], ["default"], x, (), {})


def test_hooks_on_the_base_layer_still_run_in_training():
    model, layer = _layer()
    seen = []
    layer.base_layer.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    model(torch.randn(3, 8)).sum().backward()
    assert seen == [torch.Size([3, 4])]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("length", [130, 40], ids=["260 tokens", "80 tokens"])
def test_wide_layers_take_the_native_products_and_equal_op_by_op(monkeypatch, threads, length):
    """From 512 features and 256 tokens the node's x A^T, h (s B^T), dh^T x, dh A, and dy B with h^T dy
    (one pass over dy) run in the native kernels (widths 640 -> 1024 -> 520: the last ends in an 8-wide
    strip; with and without a bias); with fewer tokens torch's matmul does. Either way: the same outputs
    and gradients as op by op."""
    require_native_kernels()
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(640, 1024), nn.Tanh(), nn.Linear(1024, 520, bias=False))
    config = LoraConfig(target_modules=["0", "2"], r=12, init_lora_weights=False)
    model = get_peft_model(base, config).train()
    x, target = torch.randn(2, length, 640, requires_grad=True), torch.randn(2, length, 520)
    calls = []
    for name in ("lowrank_product", "lowrank_expand", "masked_factor_grad", "output_grads"):
        original = getattr(_masked_lowrank, name)
        monkeypatch.setattr(
            _masked_lowrank, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a)
        )

    def run():
        model.zero_grad(set_to_none=True)
        x.grad = None
        out = model(x)
        ((out - target) ** 2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return out.detach(), grads, x.grad.clone()

    with torch_threads(threads):
        fused = run()
        # per layer: x A^T and h (s B^T) (forward); dy B with h^T dy, dh^T x, and dh A (backward)
        # (with a bias, torch's addmm starts the forward's output from it instead)
        expected = {"lowrank_product": 2, "lowrank_expand": 3, "masked_factor_grad": 2, "output_grads": 2}
        assert Counter(calls) == (expected if 2 * length >= 256 else {})
        _unfused(monkeypatch)
        plain = run()
    tolerance = {"atol": 1e-5, "rtol": 1e-4}  # float32 sums of up to 1024 products, in another order
    torch.testing.assert_close(fused[0], plain[0], **tolerance)
    for name in plain[1]:
        torch.testing.assert_close(fused[1][name], plain[1][name], **tolerance, msg=name)
    torch.testing.assert_close(fused[2], plain[2], **tolerance)


def test_double_backward_through_wide_layers_equals_op_by_op(monkeypatch):
    """A gradient penalty (create_graph=True) differentiates the node's backward: there the products run in
    torch (the native kernels have no derivative), and the second-order gradients equal op by op's."""
    require_native_kernels()
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(512, 528))
    model = get_peft_model(base, LoraConfig(target_modules=["0"], r=8, init_lora_weights=False)).train()
    x = torch.randn(260, 512, requires_grad=True)  # wide and long enough for the kernels' first order

    def penalty_grads():
        model.zero_grad(set_to_none=True)
        (input_grad,) = torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
        input_grad.square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    fused = penalty_grads()
    _unfused(monkeypatch)
    plain = penalty_grads()
    assert fused.keys() == plain.keys() and all(g.abs().sum() > 0 for g in fused.values())
    for name in plain:  # float32, summed in another order: 1e-5 of the largest value, 1e-4 relative
        atol = 1e-5 * plain[name].abs().max().item()
        torch.testing.assert_close(fused[name], plain[name], atol=atol, rtol=1e-4, msg=name)
