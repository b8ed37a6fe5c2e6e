"""EVA: data-driven initialisation (`get_eva_state_dict`, `initialize_lora_eva_weights`), against peft."""

import copy

import pytest
import torch
from tests.conftest import llama_inputs, tiny_llama
from tests.lora_family.helpers import max_diff, train_steps

import peftkit
from peftkit.tuners.lora.eva import EvaConfig, get_eva_state_dict, initialize_lora_eva_weights

TARGETS = ["q_proj", "v_proj", "down_proj"]
ATOL = 1e-6


def _loader():
    return [llama_inputs(batch=4, length=12, seed=s) for s in range(8)]


def _ours(base, **eva):
    config = peftkit.LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="eva", eva_config=EvaConfig(**eva)
    )
    model = peftkit.get_peft_model(copy.deepcopy(base), config)
    initialize_lora_eva_weights(model, _loader(), show_progress_bar=False)
    return model


def test_output_equals_base_and_ranks_match_peft():
    import peft

    base = tiny_llama()
    inputs = llama_inputs()
    ours = _ours(base)
    assert max_diff(ours(**inputs).logits, base(**inputs).logits) < ATOL  # B = 0
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="eva", eva_config=peft.EvaConfig()
        ),
    )
    peft.initialize_lora_eva_weights(theirs, _loader(), show_progress_bar=False)
    ours_config, their_config = ours.peft_config["default"], theirs.peft_config["default"]
    assert ours_config.rank_pattern == their_config.rank_pattern  # same budget split on the same data
    assert ours_config.alpha_pattern == their_config.alpha_pattern
    assert sum(ours_config.rank_pattern.values()) == 4 * 6  # the budget r * layers is kept
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def test_components_are_the_input_pca():
    base = tiny_llama()
    ours = _ours(base, rho=1.0)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    A = layer.lora_A["default"].weight
    assert A.shape == (4, 32)
    assert max_diff(A @ A.T, torch.eye(4)) < 1e-5  # orthonormal rows (no whitening)
    rows = []
    handle = base.model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda m, args, out: rows.append(args[0][mask[0].bool()])
    )
    for batch in _loader():
        mask = [batch["attention_mask"]]
        base(**batch)
    handle.remove()
    x = torch.cat(rows).double()
    _, _, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    # the leading input component is found (EVA may stop early once components are stable)
    assert (A[0].double() @ vh[0]).abs() > 0.95


def test_whitening_and_scaling_adjustment():
    base = tiny_llama()
    white = _ours(base, whiten=True)
    A = white.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    assert not torch.allclose(A @ A.T, torch.eye(A.shape[0]), atol=1e-3)
    fixed = _ours(base, adjust_scaling_factors=False)
    assert all(alpha == 8 for alpha in fixed.peft_config["default"].alpha_pattern.values())


@pytest.mark.parametrize("direction", ["peftkit_to_peft", "peft_to_peftkit"])
def test_trained_eva_adapter_loads_in_the_other_library(direction, tmp_path):
    import peft

    base = tiny_llama()
    inputs = llama_inputs()
    if direction == "peftkit_to_peft":
        model, loader_lib = _ours(base), peft
    else:
        model = peft.get_peft_model(
            copy.deepcopy(base),
            peft.LoraConfig(
                r=4,
                lora_alpha=8,
                target_modules=TARGETS,
                init_lora_weights="eva",
                eva_config=peft.EvaConfig(),
            ),
        )
        peft.initialize_lora_eva_weights(model, _loader(), show_progress_bar=False)
        loader_lib = peftkit
    train_steps(model, inputs)
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = loader_lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert max_diff(loaded(**inputs).logits, expected) < 1e-5


def test_clear_errors():
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="eva")
    )
    with pytest.raises(ValueError, match="dataloader or an eva_state_dict"):
        initialize_lora_eva_weights(model)
    with pytest.raises(ValueError, match="rho"):
        EvaConfig(rho=0.5)
    with pytest.raises(ValueError, match="peft_config"):
        get_eva_state_dict(tiny_llama(), _loader())
    assert isinstance(peftkit.LoraConfig(eva_config={"rho": 1.0}).eva_config, EvaConfig)


def test_low_cpu_mem_usage_creates_factors_on_meta_then_fills_them():
    base = tiny_llama()
    inputs = llama_inputs()
    model = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="eva"),
        low_cpu_mem_usage=True,
    )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_A["default"].weight.is_meta
    initialize_lora_eva_weights(model, _loader(), show_progress_bar=False)
    assert not layer.lora_A["default"].weight.is_meta and layer.lora_A["default"].weight.requires_grad
    assert max_diff(model(**inputs).logits, base(**inputs).logits) < ATOL


def test_input_preparation_functions_follow_peft():
    """Custom per-layer functions written for peft get the same arguments in peftkit."""
    from peft.tuners.lora import eva as theirs

    from peftkit.tuners.lora import eva as ours

    ids = torch.arange(10).view(2, 5)
    mask = torch.ones_like(ids)
    mask[0, :1] = 0
    labels = ids.clone()
    labels[1, 3:] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    config = peftkit.LoraConfig(r=2, init_lora_weights="eva", eva_config=EvaConfig())
    index = ours.prepare_model_inputs_fn_language_modeling(batch, config)
    assert torch.equal(index, theirs.prepare_model_inputs_fn_language_modeling(batch, config))
    hidden = torch.randn(2, 5, 3)
    rows = ours.prepare_layer_inputs_fn_language_modeling((hidden,), index, "layer")
    assert torch.equal(rows, theirs.prepare_layer_inputs_fn_language_modeling((hidden,), index, "layer"))
    assert rows.shape == (7, 3)
