"""PeftMixedModel: several adapters (of compatible methods) on one model, compared with peft's."""

import copy

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama, trainable_names

import peftkit
from peftkit import LoraConfig, PeftConfig


def _pair(configs: dict[str, dict]):
    """The same adapters in peft's and in peftkit's mixed model, with peft's perturbed weights in both."""
    import peft

    base = tiny_llama()
    models = []
    for lib in (peft, peftkit):
        names = list(configs)
        model = lib.get_peft_model(
            copy.deepcopy(base), lib.LoraConfig(**configs[names[0]]), adapter_name=names[0], mixed=True
        )
        for name in names[1:]:
            model.add_adapter(name, lib.LoraConfig(**configs[name]))
        models.append(model)
    theirs, ours = models
    theirs.set_adapter(list(configs))
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    ours.set_adapter(list(configs))
    return base, theirs.eval(), ours.eval()


CONFIGS = {
    "one": {"target_modules": ["q_proj", "v_proj"]},
    "two": {"target_modules": ["q_proj", "k_proj"], "r": 4, "use_rslora": True},
    "three": {"target_modules": ["v_proj", "o_proj"], "use_dora": True},
}


def test_mixed_model_tree_and_outputs_equal_peft_for_every_subset():
    base, theirs, ours = _pair(CONFIGS)
    assert type(ours).__name__ == "PeftMixedModel"
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    assert trainable_names(ours) == trainable_names(theirs)
    inputs = llama_inputs()
    for subset in (["one"], ["two"], ["three"], ["one", "two"], ["two", "three"], ["one", "two", "three"]):
        theirs.set_adapter(subset)
        ours.set_adapter(subset)
        with torch.no_grad():
            torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-5, rtol=0)
    with ours.disable_adapter(), torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, base(**inputs).logits, atol=0, rtol=0)


def test_mixed_merge_and_unload_keeps_outputs():
    _, _, ours = _pair({k: v for k, v in CONFIGS.items() if k != "three"})
    inputs = llama_inputs()
    with torch.no_grad():
        expected = ours(**inputs).logits
        merged = ours.merge_and_unload()
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-5, rtol=0)


def test_mixed_model_loads_peft_saved_adapters(tmp_path):
    import peft

    base = tiny_llama()
    for i, (name, kwargs) in enumerate(CONFIGS.items()):
        single = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
        perturb_adapter_weights(single, seed=i)
        single.save_pretrained(tmp_path / name)
    theirs = peft.PeftMixedModel.from_pretrained(copy.deepcopy(base), tmp_path / "one", adapter_name="one")
    ours = peftkit.PeftMixedModel.from_pretrained(copy.deepcopy(base), tmp_path / "one", adapter_name="one")
    for name in ("two", "three"):
        theirs.load_adapter(tmp_path / name, adapter_name=name)
        ours.load_adapter(tmp_path / name, adapter_name=name)
    theirs.set_adapter(list(CONFIGS))
    ours.set_adapter(list(CONFIGS))
    inputs = llama_inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-5, rtol=0)


def test_incompatible_type_is_refused_naming_the_types():
    model = peftkit.get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]), mixed=True)
    with pytest.raises(ValueError, match=r"'IA3' is not compatible.*LORA, LOHA, LOKR, ADALORA, OFT"):
        model.add_adapter("ia3", PeftConfig(peft_type="IA3"))
    with pytest.raises(ValueError, match="not compatible"):
        peftkit.get_peft_model(tiny_llama(), PeftConfig(peft_type="PROMPT_TUNING"), mixed=True)


@pytest.mark.parametrize(
    "option",
    [
        {"alora_invocation_tokens": [5, 6]},
        {
            "use_bdlora": peftkit.BdLoraConfig(
                target_modules_bd_a=["o_proj"], target_modules_bd_b=["q_proj"], nblocks=2
            )
        },
        {"target_parameters": ["mlp.gate_proj.weight"]},
        {"trainable_token_indices": [1, 2]},
    ],
    ids=lambda option: next(iter(option)),
)
def test_lora_options_a_mixed_model_does_not_apply_are_refused(option):
    """peft's mixed model applies these; ours made the adapter without them, silently. Now it says so,
    when the model is made and when an adapter is added."""
    (name,) = option
    config = LoraConfig(target_modules=["q_proj", "o_proj"], **option)
    with pytest.raises(ValueError, match=f"does not apply {name} yet.*instead of mixed=True"):
        peftkit.get_peft_model(tiny_llama(), config, mixed=True)
    model = peftkit.get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]), mixed=True)
    with pytest.raises(ValueError, match=f"does not apply {name} yet"):
        model.add_adapter("other", config)
    assert list(model.peft_config) == ["default"]


def test_saving_a_mixed_model_is_a_clear_error(tmp_path):
    model = peftkit.get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]), mixed=True)
    with pytest.raises(NotImplementedError, match="save each adapter"):
        model.save_pretrained(tmp_path)


def _cross_method_pair():
    """LoRA, LoHa, LoKr, AdaLoRA and OFT adapters on one model, in peft's and in peftkit's mixed model."""
    import peft

    base = tiny_llama()
    specs = [
        ("lora", "LoraConfig", {"target_modules": ["q_proj", "v_proj"]}),
        ("loha", "LoHaConfig", {"target_modules": ["q_proj", "k_proj"], "r": 4}),
        ("lokr", "LoKrConfig", {"target_modules": ["v_proj", "o_proj"], "r": 4}),
        (
            "adalora",
            "AdaLoraConfig",
            {"target_modules": ["k_proj"], "init_r": 4, "target_r": 2, "total_step": 10},
        ),
        ("oft", "OFTConfig", {"target_modules": ["q_proj"], "r": 0, "oft_block_size": 8}),
    ]
    models = []
    for lib in (peft, peftkit):
        name, cls, kwargs = specs[0]
        model = lib.get_peft_model(
            copy.deepcopy(base), getattr(lib, cls)(**kwargs), adapter_name=name, mixed=True
        )
        for name, cls, kwargs in specs[1:]:
            model.add_adapter(name, getattr(lib, cls)(**kwargs))
        models.append(model)
    theirs, ours = models
    names = [s[0] for s in specs]
    theirs.set_adapter(names)
    perturb_adapter_weights(theirs, scale=0.05)
    ours.load_state_dict(theirs.state_dict())
    return base, theirs.eval(), ours.eval(), names


def test_cross_method_mixed_model_equals_peft_for_all_and_each_subset():
    import itertools

    base, theirs, ours, names = _cross_method_pair()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    inputs = llama_inputs()
    subsets = [list(c) for k in (1, 2, 5) for c in itertools.combinations(names, k)]
    for subset in subsets:
        theirs.set_adapter(subset)
        ours.set_adapter(subset)
        with torch.no_grad():
            torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-5, rtol=0)
    assert trainable_names(ours) == trainable_names(theirs)
    with torch.no_grad():
        adapted = ours(**inputs).logits
        assert not torch.allclose(adapted, base(**inputs).logits, atol=1e-4)
        merged = ours.merge_and_unload()
        torch.testing.assert_close(merged(**inputs).logits, adapted, atol=1e-4, rtol=0)


def test_cross_method_merge_adapter_and_unmerge_round_trip():
    _, _, ours, names = _cross_method_pair()
    inputs = llama_inputs()
    ours.set_adapter(names)
    with torch.no_grad():
        adapted = ours(**inputs).logits
        ours.merge_adapter()
        torch.testing.assert_close(ours(**inputs).logits, adapted, atol=1e-4, rtol=0)
        ours.unmerge_adapter()
        torch.testing.assert_close(ours(**inputs).logits, adapted, atol=1e-5, rtol=0)
