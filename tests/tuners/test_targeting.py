"""Target matching: names, suffixes, regexes, all-linear, layer selection, defaults, and the errors."""

import warnings

import pytest
import torch
from tests.conftest import tiny_gpt2, tiny_llama, tiny_llama_seq_cls, tiny_t5
from torch import nn

import peftkit
from peftkit import LoraConfig, get_peft_model, inject_adapter_in_model
from peftkit.tuners.lora import LoraLayer
from peftkit.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists


def adapted_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer))


@pytest.mark.parametrize(
    "targets, key, expected",
    [
        (["q_proj"], "model.layers.0.self_attn.q_proj", True),
        (["self_attn.q_proj"], "model.layers.0.self_attn.q_proj", True),
        (["proj"], "model.layers.0.self_attn.q_proj", False),  # suffixes are whole dotted parts
        (["model.layers.0.self_attn.q_proj"], "model.layers.0.self_attn.q_proj", True),
        (r".*layers\.0\..*_proj", "model.layers.0.self_attn.q_proj", True),
        (r"q_proj", "model.layers.0.self_attn.q_proj", False),  # a regex must match the whole name
    ],
)
def test_matching_rules(targets, key, expected):
    assert bool(check_target_module_exists(LoraConfig(target_modules=targets), key)) is expected


def test_matching_agrees_with_peft_on_every_module():
    import peft

    model = tiny_llama()
    configs = [
        {"target_modules": ["q_proj", "mlp.up_proj"]},
        {"target_modules": r".*\.(0|1)\.self_attn\.[qk]_proj"},
        {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": 1, "layers_pattern": "layers"},
        {"target_modules": ["o_proj"], "layers_to_transform": [0]},
        {"target_modules": ["q_proj", "k_proj"], "exclude_modules": ["model.layers.1.self_attn.k_proj"]},
    ]
    for kwargs in configs:
        ours = LoraConfig(**kwargs)
        theirs = peft.LoraConfig(**kwargs)
        for key, _ in model.named_modules():
            if not key:
                continue
            expected = bool(peft.tuners.tuners_utils.check_target_module_exists(theirs, key))
            assert bool(check_target_module_exists(ours, key)) is expected, (kwargs, key)


def test_all_linear_excludes_head_and_matches_peft():
    import peft

    for model_fn, task in (
        (tiny_llama, "CAUSAL_LM"),
        (tiny_llama_seq_cls, "SEQ_CLS"),
        (tiny_gpt2, None),
        (tiny_t5, "SEQ_2_SEQ_LM"),
    ):
        ours = get_peft_model(model_fn(), LoraConfig(target_modules="all-linear", task_type=task))
        theirs = peft.get_peft_model(model_fn(), peft.LoraConfig(target_modules="all-linear", task_type=task))
        assert adapted_names(ours) == sorted(
            n for n, m in theirs.named_modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)
        )
        assert ours.peft_config["default"].target_modules == theirs.peft_config["default"].target_modules
        assert not any(n.endswith(("lm_head", "score")) for n in adapted_names(ours))


def test_default_targets_per_architecture():
    model = get_peft_model(tiny_llama(), LoraConfig())
    assert {n.rsplit(".", 1)[1] for n in adapted_names(model)} == {"q_proj", "v_proj"}
    assert model.peft_config["default"].target_modules == {"q_proj", "v_proj"}
    t5 = get_peft_model(tiny_t5(), LoraConfig(task_type="SEQ_2_SEQ_LM"))
    assert {n.rsplit(".", 1)[1] for n in adapted_names(t5)} == {"q", "v"}
    for arch in (
        "llama",
        "mistral",
        "qwen2",
        "gemma",
        "phi",
        "gpt2",
        "gpt_neox",
        "gptj",
        "opt",
        "bloom",
        "falcon",
        "bert",
        "roberta",
        "deberta",
        "t5",
        "bart",
    ):
        assert arch in peftkit.utils.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING


def test_unknown_architecture_without_targets_is_clear_error():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="specify target_modules"):
        get_peft_model(model, LoraConfig())


def test_no_match_error_names_targets_and_lists_close_modules_with_types():
    with pytest.raises(ValueError) as err:
        get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_prj", "vproj"]))
    message = str(err.value)
    assert "q_prj" in message and "vproj" in message
    assert "q_proj (Linear)" in message and "v_proj (Linear)" in message
    assert isinstance(err.value, peftkit.utils.NoMatchingPeftModuleError)


def test_no_match_after_layer_selection_says_so():
    with pytest.raises(ValueError, match="layers_to_transform"):
        get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"], layers_to_transform=[7]))


def test_partially_unmatched_list_warns_naming_entry():
    with pytest.warns(peftkit.PeftWarning, match="nonexistent"):
        model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj", "nonexistent"]))
    assert len(adapted_names(model)) == 2


def test_regex_looking_list_entry_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError):
            get_peft_model(tiny_llama(), LoraConfig(target_modules=[r".*q_proj"]))
    assert any("regular expression" in str(w.message) for w in caught)


def test_unsupported_module_type_names_it_and_the_supported_ones():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(4)

    with pytest.raises(ValueError) as err:
        get_peft_model(Odd(), LoraConfig(target_modules=["norm"]))
    assert "LayerNorm" in str(err.value) and "torch.nn.Linear" in str(err.value)


def test_modules_to_save_overlapping_target_is_trained_fully_not_adapted_as_in_peft():
    with pytest.warns(UserWarning, match=r"lm_head.*not adapted"):
        model = get_peft_model(
            tiny_llama(), LoraConfig(target_modules=["q_proj", "lm_head"], modules_to_save=["lm_head"])
        )
    assert type(model.base_model.model.lm_head).__name__ == "ModulesToSaveWrapper"
    assert "lm_head" not in " ".join(model.base_model.targeted_module_names)
    assert isinstance(model.base_model.model.model.layers[0].self_attn.q_proj, LoraLayer)
    # only fully trained modules matched: nothing would be adapted
    with pytest.raises(ValueError, match=r"match only modules that modules_to_save trains fully"):
        get_peft_model(tiny_llama(), LoraConfig(target_modules=["lm_head"], modules_to_save=["lm_head"]))


def test_rank_pattern_sets_per_module_rank():
    model = get_peft_model(
        tiny_llama(),
        LoraConfig(
            target_modules=["q_proj", "v_proj"], r=8, rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 32}
        ),
    )
    attn = model.base_model.model.model.layers[0].self_attn
    assert attn.v_proj.r["default"] == 2 and attn.q_proj.r["default"] == 8
    assert attn.q_proj.scaling["default"] == 32 / 8 and attn.v_proj.scaling["default"] == 8 / 2


def test_inject_adapter_in_model_low_level():
    model = tiny_llama()
    injected = inject_adapter_in_model(LoraConfig(target_modules=["q_proj"]), model)
    assert injected is model
    assert adapted_names(model) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    out = model(torch.randint(0, 128, (1, 4))).logits
    assert out.shape == (1, 4, 128)


def test_module_tree_keeps_original_as_base_layer():
    original = tiny_llama()
    q_proj = original.model.layers[0].self_attn.q_proj
    model = get_peft_model(original, LoraConfig(target_modules=["q_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.base_layer is q_proj
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in dict(
        model.named_parameters()
    )


@pytest.mark.parametrize(
    "config",
    [
        LoraConfig(target_modules=["lin", "norm"]),
        peftkit.VeraConfig(target_modules=["lin", "norm"]),
        peftkit.FourierFTConfig(target_modules=["lin", "norm"], n_frequency=8),
        peftkit.OFTConfig(target_modules=["lin", "norm"], r=2, oft_block_size=0),
        peftkit.BOFTConfig(target_modules=["lin", "norm"], boft_block_size=2),
    ],
    ids=["lora", "vera", "fourierft", "oft", "boft"],
)
def test_unsupported_layer_type_names_the_type_and_is_a_type_and_value_error(config):
    model = nn.Sequential()
    model.add_module("lin", nn.Linear(4, 4))
    model.add_module("norm", nn.LayerNorm(4))
    with pytest.raises(TypeError, match=r"LayerNorm.*not supported by") as caught:
        get_peft_model(model, config)
    assert isinstance(caught.value, ValueError)  # peft raises one or the other, depending on the method
