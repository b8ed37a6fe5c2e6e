"""`convert_to_lora` / `save_as_lora`: adapters of other methods (and fine-tuned models) as LoRA adapters.

Against peft: for the methods peft converts, the converted layers (B @ A: the factors are unique only up
to the signs of singular vectors) and the config equal peft's (the same truncated SVD of the same weight
change; tolerance 1e-5). Against the model itself: at full rank the converted LoRA gives the
adapted model's logits (1e-4: the change goes through an SVD and a second matmul), for every method whose
adapter is a weight change, including those peft refuses (DoRA, OFT, BOFT, HRA, IA3, AdaLoRA, ...).
"""

from __future__ import annotations

import copy
import json
import os
import warnings

import peft
import pytest
import torch
from tests.conftest import (
    conv_net,
    llama_inputs,
    perturb_adapter_weights,
    tiny_gpt2,
    tiny_llama,
    tiny_llama_seq_cls,
)

import peftkit
from peftkit.tuners.lora import convert_to_lora, save_as_lora

FACTOR_ATOL = 1e-6  # the same computation twice
PRODUCT_ATOL = 1e-5  # B @ A of our factors vs peft's: the same truncated SVD of the same weight change
FULL_RANK_ATOL = 1e-4  # a full-rank LoRA of the change vs the adapted model (SVD + refactorised matmul)
TARGETS = ["q_proj", "v_proj"]

# methods both libraries convert, with configs both accept on the tiny Llama (hidden 32, kv 16)
PEFT_CONVERTS = {
    "LoHaConfig": dict(r=4, init_weights=False),
    "LoKrConfig": dict(r=4, init_weights=False),
    "LoraConfig": dict(r=4, init_lora_weights=False),
    "VeraConfig": dict(r=4, init_weights=False),
    "FourierFTConfig": dict(n_frequency=60),
    "DeloraConfig": dict(r=4),
    "GraloraConfig": dict(r=4, gralora_k=2),
    "RandLoraConfig": dict(r=4),
    "WaveFTConfig": dict(n_frequency=100),
    "VBLoRAConfig": dict(vector_length=16),
    "UniLoraConfig": dict(),
    "TinyLoraConfig": dict(),
}
# C3A's circulant changes have repeated singular values, so a truncation is not unique (tested at full
# rank); peft gives MiSS its exact rank-r factors whatever rank is asked (tested at rank r)

# peftkit method -> config kwargs; every method whose adapter is a change of the layer's weight
CONVERTIBLE = {
    "AdaLoraConfig": dict(total_step=10),
    "BOFTConfig": dict(boft_block_size=4),
    "C3AConfig": dict(block_size=16),
    "DeftConfig": dict(),
    "DeloraConfig": dict(),
    "FourierFTConfig": dict(n_frequency=100),
    "FrodConfig": dict(),
    "GraloraConfig": dict(),
    "HRAConfig": dict(),
    "IA3Config": dict(feedforward_modules=[]),
    "LoHaConfig": dict(),
    "LoKrConfig": dict(),
    "LoraConfig": dict(),
    "MissConfig": dict(r=8),
    "OFTConfig": dict(),
    "PveraConfig": dict(),
    "RandLoraConfig": dict(),
    "RoadConfig": dict(group_size=8),
    "ShiraConfig": dict(r=2),
    "SupertuningConfig": dict(),
    "TinyLoraConfig": dict(),
    "UniLoraConfig": dict(),
    "VBLoRAConfig": dict(vector_length=16),
    "VeraConfig": dict(),
    "WaveFTConfig": dict(n_frequency=100),
}

# methods whose adapter is not a weight change: the error names the layer type and why
NOT_CONVERTIBLE = {
    "BeftConfig": "cannot merge",
    "LilyConfig": "router",
    "LNTuningConfig": "base layer is a LlamaRMSNorm",
    "PolyConfig": "cannot be merged",
    "ShadowConfig": "cannot be merged",
    "TrainableTokensConfig": "trainable tokens",
}


def _adapted(lib, method: str, base, **kwargs):
    config = getattr(lib, method)(target_modules=TARGETS, **kwargs)
    model = lib.get_peft_model(copy.deepcopy(base), config)
    perturb_adapter_weights(model)
    return model.eval()


def _peft_and_peftkit(method: str, kwargs: dict):
    base = tiny_llama()
    torch.manual_seed(0)
    theirs = _adapted(peft, method, base, **kwargs)
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), getattr(peftkit, method)(target_modules=TARGETS, **kwargs)
    )
    peftkit.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    return base, theirs, ours.eval()


def _products(tensors: dict) -> dict:
    """Layer -> B @ A of converted factors (the factors themselves are unique only up to signs)."""
    return {
        key.removesuffix(".lora_A.weight"): tensors[key.replace("lora_A", "lora_B")] @ tensor
        for key, tensor in tensors.items()
        if key.endswith(".lora_A.weight")
    }


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _as_lora(base, config, state_dict):
    """A peftkit LoRA model on a copy of `base` holding a converted adapter."""
    model = peftkit.get_peft_model(copy.deepcopy(base), config)
    result = peftkit.set_peft_model_state_dict(model, state_dict)
    assert not result.unexpected_keys
    return model.eval()


@pytest.mark.parametrize("method", sorted(PEFT_CONVERTS))
@pytest.mark.parametrize("rank", [3, 0.9], ids=["rank3", "energy0.9"])
def test_factors_and_config_equal_peft(method, rank):
    _, theirs, ours = _peft_and_peftkit(method, PEFT_CONVERTS[method])
    their_config, their_tensors = peft.tuners.lora.convert_to_lora(theirs, rank)
    our_config, our_tensors = convert_to_lora(ours, rank)
    assert our_tensors.keys() == their_tensors.keys()
    assert all(our_tensors[k].shape == t.shape for k, t in their_tensors.items())
    ours_bA, theirs_bA = _products(our_tensors), _products(their_tensors)
    for key, product in theirs_bA.items():
        assert torch.allclose(ours_bA[key], product, atol=PRODUCT_ATOL), key
    for field in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "base_model_name_or_path"):
        assert getattr(our_config, field) == getattr(their_config, field), field
    assert set(our_config.target_modules) == set(their_config.target_modules)


@pytest.mark.parametrize(
    ("method", "kwargs", "rank"), [("C3AConfig", dict(block_size=16), 1.0), ("MissConfig", dict(r=4), 4)]
)
def test_layers_equal_peft_where_the_factorisation_is_exact(method, kwargs, rank):
    _, theirs, ours = _peft_and_peftkit(method, kwargs)
    ours_bA = _products(convert_to_lora(ours, rank)[1])
    theirs_bA = _products(peft.tuners.lora.convert_to_lora(theirs, rank)[1])
    assert ours_bA.keys() == theirs_bA.keys()
    for key, product in theirs_bA.items():
        assert torch.allclose(ours_bA[key], product, atol=PRODUCT_ATOL), key


def test_save_as_lora_folder_loads_in_both_libraries(tmp_path):
    base, theirs, ours = _peft_and_peftkit("LoHaConfig", PEFT_CONVERTS["LoHaConfig"])
    inputs = llama_inputs()
    save_as_lora(tmp_path / "ours", ours, 1.0)
    peft.tuners.lora.save_as_lora(tmp_path / "theirs", theirs, 1.0)
    assert sorted(os.listdir(tmp_path / "ours")) == ["adapter_config.json", "adapter_model.safetensors"]
    expected = _logits(ours, inputs)
    for lib in (peft, peftkit):
        loaded = lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
        assert (_logits(loaded, inputs) - expected).abs().max() <= FULL_RANK_ATOL, lib.__name__
    ours_json = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    theirs_json = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    for key in ("peft_type", "r", "lora_alpha", "rank_pattern", "alpha_pattern"):
        assert ours_json[key] == theirs_json[key], key
    assert sorted(ours_json["target_modules"]) == sorted(theirs_json["target_modules"])


@pytest.mark.parametrize("method", sorted(CONVERTIBLE))
def test_full_rank_conversion_reproduces_the_adapted_model(method):
    base = tiny_llama()
    model = _adapted(peftkit, method, base, **CONVERTIBLE[method])
    assert model.supports_lora_conversion()
    inputs = llama_inputs()
    config, tensors = convert_to_lora(model, 1.0)  # energy 1.0: each layer at the full rank of its change
    assert config.peft_type == peftkit.PeftType.LORA and config.lora_alpha == config.r == 1
    assert set(config.rank_pattern) == {
        name.removeprefix("base_model.model.")
        for name, m in model.named_modules()
        if isinstance(m, peftkit.tuners.tuners_utils.BaseTunerLayer)
    }
    converted = _as_lora(base, config, tensors)
    assert (_logits(converted, inputs) - _logits(model, inputs)).abs().max() <= FULL_RANK_ATOL


@pytest.mark.parametrize(
    ("method", "targets"),
    [
        ("LoraConfig", ["emb", "conv1d", "conv2d", "conv2d_1x1", "conv3d", "lin"]),
        ("LoHaConfig", ["conv2d", "conv1d"]),
    ],
)
def test_embeddings_and_convolutions_convert_in_their_lora_layout(method, targets):
    base = conv_net()
    model = peftkit.get_peft_model(copy.deepcopy(base), getattr(peftkit, method)(target_modules=targets))
    perturb_adapter_weights(model)
    inputs = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LoRA to LoRA: "there is typically no need"
        config, tensors = convert_to_lora(model.eval(), 1.0)
    if "emb" in targets:
        assert tensors["base_model.model.emb.lora_embedding_A"].shape[1] == 20
    converted = _as_lora(base, config, tensors)
    with torch.no_grad():
        assert (converted(inputs) - model(inputs)).abs().max() <= FULL_RANK_ATOL


@pytest.mark.parametrize("method", sorted(NOT_CONVERTIBLE))
def test_adapters_that_are_not_weight_changes_are_refused_with_the_reason(method):
    kwargs = (
        {"target_modules": ["embed_tokens"], "token_indices": [1, 2]}
        if method == "TrainableTokensConfig"
        else {}
    )
    if method == "LNTuningConfig":
        kwargs = {"target_modules": ["input_layernorm"]}
    config = getattr(peftkit, method)(**({"target_modules": TARGETS} | kwargs))
    model = peftkit.get_peft_model(tiny_llama(), config)
    assert not model.supports_lora_conversion()
    with pytest.raises(TypeError, match=f"do not support LoRA conversion: .*{NOT_CONVERTIBLE[method]}"):
        convert_to_lora(model, 4)


@pytest.mark.parametrize("method", ["OFTConfig", "IA3Config", "HRAConfig", "BOFTConfig"])
def test_methods_peft_refuses_are_converted(method):
    kwargs = {"feedforward_modules": []} if method == "IA3Config" else {}
    kwargs |= {"boft_block_size": 4} if method == "BOFTConfig" else {}
    theirs = peft.get_peft_model(tiny_llama(), getattr(peft, method)(target_modules=TARGETS, **kwargs))
    ours = peftkit.get_peft_model(tiny_llama(), getattr(peftkit, method)(target_modules=TARGETS, **kwargs))
    assert not theirs.supports_lora_conversion()
    assert ours.supports_lora_conversion()


def test_supports_lora_conversion_agrees_with_peft_where_peft_converts():
    for method, kwargs in PEFT_CONVERTS.items():
        _, theirs, ours = _peft_and_peftkit(method, kwargs)
        assert ours.supports_lora_conversion() == theirs.supports_lora_conversion() is True, method
    prompt = peftkit.get_peft_model(
        tiny_llama(), peftkit.PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM")
    )
    assert prompt.supports_lora_conversion() is False


def test_dora_converts_with_its_magnitude_where_peft_drops_it():
    base = tiny_llama()
    kwargs = dict(target_modules=TARGETS, use_dora=True, init_lora_weights=False)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    perturb_adapter_weights(theirs)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**kwargs))
    peftkit.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    inputs = llama_inputs()
    expected = _logits(ours.eval(), inputs)
    assert (_logits(theirs.eval(), inputs) - expected).abs().max() <= 1e-5
    with pytest.warns(UserWarning, match="already a LoRA adapter"):
        our_config, our_tensors = convert_to_lora(ours, 1.0)
    their_config, their_tensors = peft.tuners.lora.convert_to_lora(theirs, 1.0)
    assert (_logits(_as_lora(base, our_config, our_tensors), inputs) - expected).abs().max() <= FULL_RANK_ATOL
    # peft factorises s * B A only: the magnitude's rescaling is lost
    their_lora = peft.get_peft_model(copy.deepcopy(base), their_config)
    peft.set_peft_model_state_dict(their_lora, their_tensors)
    assert (_logits(their_lora.eval(), inputs) - expected).abs().max() > 1e-2


def test_modules_to_save_are_carried_as_in_peft():
    base = tiny_llama_seq_cls()
    kwargs = dict(target_modules=TARGETS, r=4, task_type="SEQ_CLS")
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoHaConfig(**kwargs))
    perturb_adapter_weights(theirs)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoHaConfig(**kwargs))
    peftkit.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    their_config, their_tensors = peft.tuners.lora.convert_to_lora(theirs, 3)
    our_config, our_tensors = convert_to_lora(ours, 3)
    assert our_config.modules_to_save == their_config.modules_to_save
    assert "base_model.model.score.weight" in our_tensors
    assert our_tensors.keys() == their_tensors.keys()
    assert torch.equal(
        our_tensors["base_model.model.score.weight"], their_tensors["base_model.model.score.weight"]
    )


def test_compiled_conversion_gives_the_same_factors():
    _, _, ours = _peft_and_peftkit("LoKrConfig", PEFT_CONVERTS["LoKrConfig"])
    _, plain = convert_to_lora(ours, 3)
    _, compiled = convert_to_lora(ours, 3, compile_kwargs={"backend": "eager"})
    assert all(torch.allclose(compiled[k], plain[k], atol=FACTOR_ATOL) for k in plain)


@pytest.mark.parametrize("rank", [0, -2, 1.5, 0.0, True, "8"])
def test_invalid_ranks_are_refused(rank):
    _, _, ours = _peft_and_peftkit("LoHaConfig", PEFT_CONVERTS["LoHaConfig"])
    with pytest.raises(ValueError, match="rank"):
        convert_to_lora(ours, rank)


def test_rank_above_a_layer_size_names_the_layer():
    _, _, ours = _peft_and_peftkit("LoHaConfig", PEFT_CONVERTS["LoHaConfig"])
    with pytest.raises(ValueError, match="larger than the weight shape .16. of .*v_proj"):
        convert_to_lora(ours, 20)


def test_merged_adapters_trained_biases_and_plain_models_are_refused():
    _, _, ours = _peft_and_peftkit("LoHaConfig", PEFT_CONVERTS["LoHaConfig"])
    ours.merge_adapter()
    with pytest.raises(TypeError, match="unmerge_adapter"):
        convert_to_lora(ours, 2)
    biased = peftkit.get_peft_model(tiny_llama(), peftkit.VeraConfig(target_modules=TARGETS, bias="all"))
    with pytest.raises(ValueError, match="bias='all'"):
        convert_to_lora(biased, 2)
    with pytest.raises(TypeError, match="Could not detect any layer"):
        convert_to_lora(tiny_llama(), 2)


def test_save_as_lora_refuses_a_file_path_and_leaves_an_existing_adapter_loadable(tmp_path):
    _, _, ours = _peft_and_peftkit("LoHaConfig", PEFT_CONVERTS["LoHaConfig"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        save_as_lora(tmp_path / "file", ours, 2)
    save_as_lora(tmp_path / "adapter", ours, 2)
    with pytest.raises(ValueError, match="rank"):  # fails before anything is written
        save_as_lora(tmp_path / "adapter", ours, 0)
    assert peftkit.LoraConfig.from_pretrained(tmp_path / "adapter").r == 2


# ----- a fully fine-tuned model's difference from its base -----
def _fine_tuned_gpt2():
    base = tiny_gpt2()
    tuned = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        block = tuned.transformer.h[0]
        block.attn.c_attn.weight.add_(torch.randn(block.attn.c_attn.weight.shape, generator=gen) * 0.05)
        block.attn.c_attn.bias.add_(0.1)
        block.mlp.c_fc.weight.add_(torch.randn(block.mlp.c_fc.weight.shape, generator=gen) * 0.05)
        tuned.transformer.ln_f.weight.mul_(1.5)
    return base.eval(), tuned.eval()


def test_weight_difference_at_full_rank_is_the_fine_tuned_model_in_both_libraries(tmp_path):
    base, tuned = _fine_tuned_gpt2()
    inputs = llama_inputs(vocab=base.config.vocab_size)
    save_as_lora(tmp_path, tuned, 1.0, base_model=base)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"]
    assert config["lora_bias"] is True  # the attention's bias changed too
    assert config["modules_to_save"] == ["transformer.ln_f"]
    expected = _logits(tuned, inputs)
    assert (_logits(base, inputs) - expected).abs().max() > 1e-2
    for lib in (peft, peftkit):
        loaded = lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
        assert (_logits(loaded, inputs) - expected).abs().max() <= FULL_RANK_ATOL, lib.__name__


def test_weight_difference_at_a_lower_rank_keeps_that_rank():
    base, tuned = _fine_tuned_gpt2()
    config, tensors = convert_to_lora(tuned, 2, base_model=base)
    assert config.r == config.lora_alpha == 2 and not config.rank_pattern
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (2, 32)
    assert tensors["base_model.model.transformer.h.0.mlp.c_fc.lora_B.bias"].abs().max() == 0  # unchanged bias


def test_weight_difference_of_unrelated_or_identical_models_is_refused():
    base, _ = _fine_tuned_gpt2()
    with pytest.raises(ValueError, match="no change to convert"):
        convert_to_lora(copy.deepcopy(base), 4, base_model=base)
    with pytest.raises(ValueError, match="same parameters"):
        convert_to_lora(tiny_llama(), 4, base_model=base)
