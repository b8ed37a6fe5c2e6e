"""Signature updates and adapter context managers, compared with peft's helpers."""

import copy
import inspect

import pytest
import torch
from tests.conftest import llama_inputs, make_pair, tiny_llama

import peftkit
from peftkit.adapter_contexts import disable_input_dtype_casting, rescale_adapter_scale
from peftkit.utils.signatures import update_forward_signature, update_generate_signature, update_signature


def test_update_signature_gives_base_signature_like_peft():
    import peft.helpers

    _, theirs, ours = make_pair(tiny_llama, {"target_modules": ["q_proj"]})
    assert list(inspect.signature(ours.forward).parameters) == ["args", "kwargs"]
    peft.helpers.update_signature(theirs)
    update_signature(ours)
    assert inspect.signature(ours.forward) == inspect.signature(theirs.forward)
    assert inspect.signature(ours.generate) == inspect.signature(theirs.generate)
    assert ours.forward.__doc__ == type(ours.get_base_model()).forward.__doc__
    inputs = llama_inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward(**inputs).logits, theirs(**inputs).logits, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="not supported"):
        update_signature(ours, method="bad")


def test_task_class_signature_is_left_alone():
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM")
    )
    before = inspect.signature(model.forward)
    update_forward_signature(model)
    update_generate_signature(model)
    assert inspect.signature(model.forward) == before  # already explicit: unchanged


def test_rescale_adapter_scale_matches_peft_and_restores_exactly():
    import peft.helpers

    _, theirs, ours = make_pair(tiny_llama, {"target_modules": "all-linear", "use_rslora": True})
    inputs = llama_inputs()
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    before = dict(layer.scaling)
    with torch.no_grad():
        normal = ours(**inputs).logits
        with peft.helpers.rescale_adapter_scale(theirs, 0.3), rescale_adapter_scale(ours, 0.3):
            assert layer.scaling["default"] == pytest.approx(0.3 * before["default"])
            torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-6, rtol=0)
            assert not torch.allclose(ours(**inputs).logits, normal, atol=1e-4)
        assert layer.scaling == before
        torch.testing.assert_close(ours(**inputs).logits, normal, atol=0, rtol=0)


def test_rescale_adapter_scale_errors():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="float"), rescale_adapter_scale(model, "2"):
        pass
    with pytest.raises(ValueError, match="LoraLayer"), rescale_adapter_scale(torch.nn.Linear(2, 2), 2.0):
        pass


def test_disable_input_dtype_casting_keeps_input_dtype():
    base = tiny_llama().to(torch.bfloat16)
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(target_modules=["q_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_A["default"].weight.dtype == torch.float32
    x = torch.randn(2, 3, 32, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16  # input cast to fp32 for the adapter, result back to bf16
    with disable_input_dtype_casting(model):
        assert not layer.cast_input_dtype_enabled
        with pytest.raises(RuntimeError):  # bf16 input meets fp32 weights: nothing casts it any more
            layer(x)
    assert layer.cast_input_dtype_enabled
    with disable_input_dtype_casting(model, active=False):
        assert layer.cast_input_dtype_enabled


def test_helpers_module_exposes_peft_names():
    import peft.helpers

    import peftkit.helpers

    for name in (
        "check_if_peft_model",
        "rescale_adapter_scale",
        "disable_input_dtype_casting",
        "update_forward_signature",
        "update_generate_signature",
        "update_signature",
    ):
        assert hasattr(peft.helpers, name)
        assert callable(getattr(peftkit.helpers, name))


@pytest.mark.parametrize("method", ["lora", "loha"])
def test_per_layer_scaling_helpers(method):
    """peft's set_scale / scale_layer / unscale_layer, shared by LoRA and the LyCORIS methods."""
    config = (
        peftkit.LoraConfig(target_modules=["q_proj"], r=4, lora_alpha=8)
        if method == "lora"
        else peftkit.LoHaConfig(target_modules=["q_proj"], r=4, alpha=8)
    )
    model = peftkit.get_peft_model(tiny_llama(), config)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == 2.0
    layer.set_scale("default", 3.0)
    assert layer.scaling["default"] == 6.0
    layer.scale_layer(0.5)
    assert layer.scaling["default"] == 3.0
    layer.unscale_layer(3.0)
    assert layer.scaling["default"] == 1.0
    layer.unscale_layer()
    assert layer.scaling["default"] == 2.0
    layer.set_scale("not_here", 5.0)  # adapters the layer does not hold are ignored
    assert layer.scaling == {"default": 2.0}
