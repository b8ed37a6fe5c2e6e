"""PiSSA, pissa_niter_K, OLoRA and orthogonal initialisations against peft.

At initialisation the model computes the base model's outputs (the residual base weight absorbs what the
adapter starts with); the deterministic schemes (PiSSA, OLoRA) give peft's residual weights and factors.
"""

import copy

import pytest
import torch
from tests.conftest import llama_inputs, tiny_gpt2, tiny_llama, trainable_names
from tests.lora_family.helpers import both, max_diff

import peftkit

TARGETS = ["q_proj", "v_proj", "down_proj"]
INIT_TOL = 1e-5  # fp32 logits of the initialised model vs the base model
RESIDUAL_TOL = 1e-4  # residual base weights vs peft's


@pytest.mark.parametrize("init", ["pissa", "olora", "orthogonal", "pissa_niter_4"])
def test_output_equals_base_at_init(init):
    base = tiny_llama()
    inputs = llama_inputs()
    ours = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=init),
    )
    assert max_diff(ours(**inputs).logits, base(**inputs).logits) < INIT_TOL
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_A["default"].weight.abs().sum() > 0
    assert layer.lora_B["default"].weight.abs().sum() > 0  # unlike the default init, B starts non-zero


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_residual_and_factors_equal_peft(init, use_rslora):
    theirs, ours = both(
        tiny_llama(), r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=init, use_rslora=use_rslora
    )
    their_state = theirs.state_dict()
    our_state = ours.state_dict()
    assert sorted(our_state) == sorted(their_state)
    residuals = [k for k in our_state if k.endswith("base_layer.weight")]
    assert len(residuals) == 6
    for key in residuals:
        assert max_diff(our_state[key], their_state[key]) < RESIDUAL_TOL, key
        assert (
            max_diff(
                our_state[key],
                tiny_llama().state_dict()[key.replace("base_model.model.", "").replace(".base_layer", "")],
            )
            > 1e-3
        )
    for key in (k for k in our_state if ".lora_" in k):
        # singular vectors are defined up to sign: compare magnitudes for PiSSA, exactly for OLoRA (QR)
        ours_t, theirs_t = (
            (our_state[key].abs(), their_state[key].abs())
            if init == "pissa"
            else (our_state[key], their_state[key])
        )
        assert max_diff(ours_t, theirs_t) < RESIDUAL_TOL, key
    assert trainable_names(ours) == trainable_names(theirs)


def test_pissa_niter_residual_is_close_to_full_svd():
    base = tiny_llama()
    full = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa")
    )
    fast = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa_niter_16"),
    )
    key = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    # 16 subspace iterations on a 32x32 matrix recover the top-4 subspace closely
    assert max_diff(full.state_dict()[key], fast.state_dict()[key]) < 5e-2


def test_orthogonal_factors_multiply_to_zero_and_need_even_rank():
    base = tiny_llama()
    ours = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="orthogonal"),
    )
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert (B @ A).abs().max() < 1e-6
    assert torch.linalg.matrix_rank(A) == 2 and torch.linalg.matrix_rank(B) == 2
    assert layer.base_layer.weight.equal(base.model.layers[0].self_attn.q_proj.weight)  # base untouched
    with pytest.raises(ValueError, match="even rank"):
        peftkit.get_peft_model(
            copy.deepcopy(base),
            peftkit.LoraConfig(r=3, target_modules=["q_proj"], init_lora_weights="orthogonal"),
        )


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_conv1d_fan_in_fan_out(init):
    # peft's OLoRA breaks on transformers' Conv1D (it does not transpose); peftkit transposes both
    base = tiny_gpt2()
    ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(0))
    ours = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=init, fan_in_fan_out=True),
    )
    assert max_diff(ours(ids).logits, base(ids).logits) < INIT_TOL
    if init == "pissa":
        import peft

        theirs = peft.get_peft_model(
            copy.deepcopy(base),
            peft.LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=init, fan_in_fan_out=True),
        )
        key = "base_model.model.transformer.h.0.attn.c_attn.base_layer.weight"
        assert max_diff(ours.state_dict()[key], theirs.state_dict()[key]) < RESIDUAL_TOL


def test_embedding_keeps_default_init_and_conv_raises():
    from tests.conftest import conv_net

    base = conv_net()
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(r=2, target_modules=["emb"], init_lora_weights="pissa")
    )
    emb = ours.base_model.model.emb
    assert emb.lora_embedding_A["default"].abs().sum() == 0  # peft's rule: embeddings keep the default init
    assert emb.base_layer.weight.equal(base.emb.weight)
    with pytest.raises(ValueError, match="linear layers only"):
        peftkit.get_peft_model(
            copy.deepcopy(base), peftkit.LoraConfig(r=2, target_modules=["conv2d"], init_lora_weights="olora")
        )


def test_low_precision_base_keeps_dtype():
    base = tiny_llama().to(torch.bfloat16)
    inputs = llama_inputs()
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa")
    )
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert layer.lora_A["default"].weight.dtype == torch.float32  # autocast_adapter_dtype
    # bf16 residual: the output matches the base up to bf16 rounding of the residual weight
    assert max_diff(ours(**inputs).logits, base(**inputs).logits) < 5e-2


def test_loading_saved_pissa_adapter_recomputes_residual(tmp_path):
    """A PiSSA adapter saved without conversion loads on the original base (the residual is recomputed)."""
    from tests.lora_family.helpers import train_steps

    base = tiny_llama()
    inputs = llama_inputs()
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="pissa")
    )
    train_steps(ours, inputs)
    expected = ours(**inputs).logits
    ours.save_pretrained(tmp_path)
    import peft

    for lib in (peftkit, peft):
        loaded = lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
        assert max_diff(loaded(**inputs).logits, expected) < 1e-4, lib.__name__


def test_rank_above_layer_size_raises():
    with pytest.raises(ValueError, match="r <= min"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(r=40, target_modules=["k_proj"], init_lora_weights="pissa")
        )
