"""Hot-swapping: the loaded adapter's parameter objects get the new adapter's values in place.

Every swap is compared with loading the new adapter normally (1e-6), and the parameters must be the
very same objects (id and data_ptr), so a compiled model keeps its graph: the compiled tests run with
dynamo's `error_on_recompile`.
"""

from __future__ import annotations

import copy
import inspect

import peft
import peft.utils.hotswap as peft_hotswap
import pytest
import torch
from tests.conftest import conv_net, llama_inputs, perturb_adapter_weights, tiny_llama
from tests.persistence.helpers import ATOL, max_diff

import peftkit
from peftkit.utils import hotswap
from peftkit.utils.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap

BASE = tiny_llama()


def _logits(model):
    with torch.no_grad():
        return model(**llama_inputs()).logits


def _saved(tmp_path, name, seed, builder=None, inputs=None, **config):
    """Save a perturbed peft adapter; return its folder and its outputs."""
    base = builder() if builder else copy.deepcopy(BASE)
    model = peft.get_peft_model(base, peft.LoraConfig(**config)).eval()
    perturb_adapter_weights(model, seed=seed)
    model.save_pretrained(tmp_path / name)
    with torch.no_grad():
        out = model(**inputs) if inputs else model(**llama_inputs()).logits
    return tmp_path / name, out


def _identity(model):
    return {n: (id(p), p.data_ptr()) for n, p in model.named_parameters()}


QV = {"target_modules": ["q_proj", "v_proj"]}


@pytest.fixture
def adapters(tmp_path):
    return {
        "r4": _saved(tmp_path, "r4", 0, r=4, lora_alpha=8, **QV),
        "r4_other_weights": _saved(tmp_path, "r4b", 1, r=4, lora_alpha=8, **QV),
        "r2_alpha3": _saved(tmp_path, "r2", 2, r=2, lora_alpha=3, **QV),
        "r4_alpha16_rslora": _saved(tmp_path, "rs", 3, r=4, lora_alpha=16, use_rslora=True, **QV),
        "r8": _saved(tmp_path, "r8", 4, r=8, lora_alpha=8, **QV),
        "other_targets": _saved(tmp_path, "qk", 5, r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"]),
        "fewer_targets": _saved(tmp_path, "q", 6, r=4, lora_alpha=8, target_modules=["q_proj"]),
        "dora": _saved(tmp_path, "dora", 7, r=4, lora_alpha=8, use_dora=True, **QV),
    }


def _load(folder):
    return peftkit.PeftModel.from_pretrained(copy.deepcopy(BASE), folder)


@pytest.mark.parametrize("new", ["r4_other_weights", "r2_alpha3", "r4_alpha16_rslora"])
def test_swap_without_preparation_keeps_parameter_objects(adapters, new):
    model = _load(adapters["r4"][0])
    before = _identity(model)
    hotswap_adapter(model, str(adapters[new][0]), "default")
    assert _identity(model) == before
    assert max_diff(_logits(model), adapters[new][1]) <= ATOL
    assert max_diff(_logits(model), _logits(_load(adapters[new][0]))) <= ATOL


def test_prepare_pads_rank_and_makes_scalings_tensors_without_changing_outputs(adapters):
    model = _load(adapters["r4"][0])
    reference = _logits(model)
    prepare_model_for_compiled_hotswap(model, target_rank=8)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_A["default"].weight.shape == (8, 32) and layer.lora_B["default"].weight.shape == (32, 8)
    assert torch.is_tensor(layer.scaling["default"])
    assert max_diff(_logits(model), reference) <= ATOL


def test_swaps_on_compiled_model_do_not_recompile(adapters):
    model = _load(adapters["r4"][0])
    prepare_model_for_compiled_hotswap(model, target_rank=8)
    compiled = torch.compile(model, backend="eager")
    _logits(compiled)
    before = _identity(model)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for name in ("r2_alpha3", "r8", "r4_alpha16_rslora", "r4"):
            hotswap_adapter(compiled, str(adapters[name][0]), "default")
            assert max_diff(_logits(compiled), adapters[name][1]) <= ATOL
    assert _identity(model) == before


def test_prepare_updates_given_configs():
    model = peftkit.get_peft_model(
        copy.deepcopy(BASE), peftkit.LoraConfig(r=4, rank_pattern={"q_proj": 2}, **QV)
    )
    config = copy.deepcopy(model.peft_config)
    prepare_model_for_compiled_hotswap(model, target_rank=16, config=config)
    assert config["default"].r == 16 and config["default"].rank_pattern == {"q_proj": 16}


def test_other_targets_is_an_error_and_changes_nothing(adapters):
    model = _load(adapters["r4"][0])
    reference = _logits(model)
    for name, message in (("other_targets", r"k_proj.*v_proj"), ("fewer_targets", r"lacks.*v_proj")):
        with pytest.raises(RuntimeError, match=message):
            hotswap_adapter(model, str(adapters[name][0]), "default")
    assert max_diff(_logits(model), reference) == 0.0


def test_larger_rank_than_held_is_an_error(adapters):
    model = _load(adapters["r4"][0])
    with pytest.raises(RuntimeError, match=r"rank 8.*larger than the rank 4.*target_rank=8"):
        hotswap_adapter(model, str(adapters["r8"][0]), "default")
    prepare_model_for_compiled_hotswap(model, target_rank=6)
    with pytest.raises(RuntimeError, match=r"rank 8.*larger than the rank 6"):
        hotswap_adapter(model, str(adapters["r8"][0]), "default")


def test_structural_differences_are_errors(adapters):
    model = _load(adapters["r4"][0])
    with pytest.raises(ValueError, match="use_dora"):
        hotswap_adapter(model, str(adapters["dora"][0]), "default")


def test_merged_adapter_is_an_error(adapters):
    model = _load(adapters["r4"][0])
    model.merge_adapter()
    with pytest.raises(RuntimeError, match="unmerge"):
        hotswap_adapter(model, str(adapters["r4_other_weights"][0]), "default")


def test_dora_swap(tmp_path):
    first = _saved(tmp_path, "d1", 0, r=4, use_dora=True, **QV)
    second = _saved(tmp_path, "d2", 1, r=2, lora_alpha=5, use_dora=True, **QV)
    model = _load(first[0])
    before = _identity(model)
    hotswap_adapter(model, str(second[0]), "default")
    assert _identity(model) == before
    assert max_diff(_logits(model), second[1]) <= ATOL


def test_conv_and_embedding_swap_with_smaller_rank(tmp_path):
    inputs = {"input_ids": torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(0))}
    targets = {"target_modules": ["conv2d", "emb", "lin"]}
    first = _saved(tmp_path, "c1", 0, builder=conv_net, inputs=inputs, r=4, **targets)
    second = _saved(tmp_path, "c2", 1, builder=conv_net, inputs=inputs, r=2, lora_alpha=3, **targets)
    model = peftkit.PeftModel.from_pretrained(conv_net(), first[0])
    prepare_model_for_compiled_hotswap(model, target_rank=4)
    before = _identity(model)
    hotswap_adapter(model, str(second[0]), "default")
    assert _identity(model) == before
    with torch.no_grad():
        assert max_diff(model(**inputs), second[1]) <= ATOL


def test_prepare_errors():
    model = peftkit.get_peft_model(copy.deepcopy(BASE), peftkit.LoraConfig(r=8, **QV))
    with pytest.raises(ValueError, match=r"target rank 4.*original rank is larger \(8\)"):
        prepare_model_for_compiled_hotswap(model, target_rank=4)
    with pytest.raises(ValueError, match="before"):
        prepare_model_for_compiled_hotswap(torch.compile(model, backend="eager"))
    with pytest.warns(UserWarning, match="before"):
        prepare_model_for_compiled_hotswap(torch.compile(model, backend="eager"), check_compiled="warn")
    with pytest.raises(ValueError, match="No adapter layers"):
        prepare_model_for_compiled_hotswap(copy.deepcopy(BASE))


def test_unknown_adapter_name_is_an_error(adapters):
    model = _load(adapters["r4"][0])
    with pytest.raises(ValueError, match="nope"):
        hotswap_adapter(model, str(adapters["r4"][0]), "nope")


@pytest.mark.parametrize(
    "name", ["hotswap_adapter", "prepare_model_for_compiled_hotswap", "hotswap_adapter_from_state_dict"]
)
def test_signatures_match_peft(name):
    ours, theirs = inspect.signature(getattr(hotswap, name)), inspect.signature(getattr(peft_hotswap, name))
    assert list(ours.parameters) == list(theirs.parameters)
    assert [p.default for p in ours.parameters.values()] == [p.default for p in theirs.parameters.values()]
    assert [p.kind for p in ours.parameters.values()] == [p.kind for p in theirs.parameters.values()]


@pytest.mark.slow
def test_swap_under_inductor_follows_new_adapter_without_recompiling(adapters):
    """Inductor may bake constants into its kernels: outputs must still follow the swapped values."""
    model = _load(adapters["r4"][0])
    prepare_model_for_compiled_hotswap(model, target_rank=8)
    compiled = torch.compile(model)
    assert max_diff(_logits(compiled), adapters["r4"][1]) <= 1e-5  # fused kernels: a looser fp32 bound
    with torch._dynamo.config.patch(error_on_recompile=True):
        for name in ("r2_alpha3", "r8"):
            hotswap_adapter(compiled, str(adapters[name][0]), "default")
            assert max_diff(_logits(compiled), adapters[name][1]) <= 1e-5


def test_adalora_adapters_are_refused_before_anything_changes():
    """AdaLoRA layers subclass LoRA's; hot-swap must not treat them as LoRA."""
    model = peftkit.get_peft_model(
        copy.deepcopy(BASE), peftkit.AdaLoraConfig(target_modules=["q_proj"], total_step=10)
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="LoRA adapters only"):
        prepare_model_for_compiled_hotswap(model, target_rank=16)
    state = {k: v + 1 for k, v in peftkit.get_peft_model_state_dict(model).items()}
    with pytest.raises(ValueError, match="LoRA adapters only"):
        hotswap.hotswap_adapter_from_state_dict(model, state, "default", model.peft_config["default"])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
