"""TinyLoRA against peft: the SVD factors, projections and vectors are bit-identical for a seed, files move
both ways with the same logits, same names, merge/unmerge/disable, weight tying, embeddings."""

import copy

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import perturb_adapter_weights, tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "TinyLoraConfig"
QV = {"r": 2, "u": 4, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_tied_embedding_uniform": Case(
        tiny_llama,
        {
            "r": 3,
            "u": 5,
            "target_modules": ["embed_tokens", "q_proj", "down_proj"],
            "weight_tying": 0.5,
            "init_weights": "uniform",
        },
    ),
    "llama_defaults_no_saved_projection": Case(
        tiny_llama, {"save_projection": False, "projection_seed": 7}, task_type="CAUSAL_LM"
    ),
    "gpt2_conv1d_all_tied": Case(tiny_gpt2, {"r": 4, "u": 3, "weight_tying": 1.0}, task_type="CAUSAL_LM"),
    "llama_bias_tinylora_only": Case(
        lambda: tiny_llama(attention_bias=True), {**QV, "bias": "tinylora_only"}
    ),
    "llama_seq_cls": Case(tiny_llama_seq_cls, QV, task_type="SEQ_CLS"),
}


# a trained bias is not undone by disabling the adapter, and unload keeps a trained classification head
# (modules_to_save): those cases are left out here
MERGE_CASES = {
    name: case for name, case in CASES.items() if "bias" not in case.config and case.task_type != "SEQ_CLS"
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=MERGE_CASES,
        training="llama_tied_embedding_uniform",
        training_lr=5e-2,
        bf16="llama_tied_embedding_uniform",
        mixed_batch="llama_tied_embedding_uniform",
        low_cpu_mem_usage=["llama_tied_embedding_uniform", "llama_defaults_no_saved_projection"],
        gradients=checks.ALL,
        default_targets="TRANSFORMERS_MODELS_TO_TINYLORA_TARGET_MODULES_MAPPING",
    )
)


@pytest.mark.parametrize(
    ("dtype", "autocast"), [(torch.float32, True), (torch.bfloat16, True), (torch.bfloat16, False)]
)
def test_everything_built_is_bit_identical_to_peft(dtype, autocast):
    """Same torch seed, same base: the SVD factors, the projections and the (uniform) vectors are peft's, bit
    for bit and dtype for dtype."""
    kwargs = {
        "r": 3,
        "u": 5,
        "target_modules": ["embed_tokens", "q_proj", "down_proj"],
        "weight_tying": 0.3,
        "init_weights": "uniform",
        "projection_seed": 11,
    }
    base = tiny_llama().to(dtype)
    models = []
    for lib in (peft, peftkit):
        torch.manual_seed(5)
        config = getattr(lib, METHOD)(**kwargs)
        models.append(lib.get_peft_model(copy.deepcopy(base), config, autocast_adapter_dtype=autocast))
    theirs, ours = (m.state_dict() for m in models)
    assert sorted(ours) == sorted(theirs)
    for key, expected in theirs.items():
        assert ours[key].dtype == expected.dtype and torch.equal(ours[key], expected), key


@pytest.mark.parametrize("weight_tying", [0.0, 0.25, 0.5, 0.7, 1.0])
def test_layer_groups_are_peft_s(weight_tying):
    config = {"r": 2, "u": 2, "target_modules": "all-linear", "weight_tying": weight_tying}
    base = tiny_llama()
    models = [
        lib.get_peft_model(copy.deepcopy(base), getattr(lib, METHOD)(**config)) for lib in (peft, peftkit)
    ]
    groups = [
        {
            name: m._tinylora_v_key["default"]
            for name, m in model.named_modules()
            if hasattr(m, "_tinylora_v_key")
        }
        for model in models
    ]
    assert groups[1] == groups[0]
    assert sorted(models[1].base_model.tinylora_v["default"]) == sorted(
        models[0].base_model.tinylora_v["default"]
    )


def test_file_holds_vectors_once_and_projections_only_when_saved(tmp_path):
    base = tiny_llama()
    for save in (True, False):
        model = peftkit.get_peft_model(
            copy.deepcopy(base), peftkit.TinyLoraConfig(**QV, weight_tying=1.0, save_projection=save)
        )
        model.save_pretrained(tmp_path / str(save))
        keys = set(load_file(tmp_path / str(save) / "adapter_model.safetensors"))
        assert [k for k in keys if "tinylora_v" in k] == ["base_model.tinylora_v.0"]  # not once per layer
        assert any(k.endswith(".tinylora_P") for k in keys) is save
        assert sum(k.endswith(".tinylora_A") for k in keys) == 4


def test_second_adapter_with_other_targets_moves_both_ways(tmp_path):
    """A second adapter on other (and overlapping) layers has its own layer numbering and vectors; its file
    (in the sub-folder) loads into either library with the same logits."""
    base = tiny_llama()
    second = {"r": 2, "u": 3, "target_modules": ["v_proj", "o_proj"], "weight_tying": 0.5}
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.TinyLoraConfig(**QV))
    ours.add_adapter("second", peftkit.TinyLoraConfig(**second))
    ours.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(ours)
    assert sorted(ours.base_model.tinylora_v["second"]) == ["0", "1"]
    checks.check_second_adapter_moves_both_ways(base, ours, tmp_path)
    ours.delete_adapter("second")
    assert sorted(ours.base_model.tinylora_v) == ["default"]
    assert not any(k for k in ours.state_dict() if ".second" in k)


def test_adapters_share_save_projection():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.TinyLoraConfig(**QV))
    with pytest.warns(UserWarning, match="save_projection=False"):
        config = peftkit.TinyLoraConfig(**QV, save_projection=False)
    with pytest.raises(TypeError, match="saved for all adapters or none"):
        model.add_adapter("other", config)
    assert sorted(model.peft_config) == ["default"] and sorted(model.base_model.tinylora_v) == ["default"]


def test_unsupported_layer_is_a_clear_error():
    from tests.conftest import conv_net

    with pytest.raises(ValueError, match="not supported by TinyLoraModel"):
        peftkit.get_peft_model(
            conv_net(), peftkit.TinyLoraConfig(**{**QV, "target_modules": ["lin", "conv2d"]})
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "`r` should be a positive integer"),
        ({"u": -1}, "`u` should be a positive integer"),
        ({"weight_tying": 1.5}, "`weight_tying` should be a float between 0.0 and 1.0"),
        ({"init_weights": "gaussian"}, "init_weights must be one of"),
        ({"tinylora_dropout": 1.0}, r"tinylora_dropout must be in \[0, 1\)"),
        ({"bias": "lora_only"}, "bias must be one of"),
        ({"layers_pattern": "layers"}, "layers_to_transform` must also be specified"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        peftkit.TinyLoraConfig(**kwargs)
