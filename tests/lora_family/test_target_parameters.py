"""LoRA on nn.Parameters (`target_parameters`), e.g. Mixtral's fused expert weights, against peft."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, trainable_names
from tests.lora_family.helpers import both, max_diff
from torch import nn

import peftkit

ATOL = 1e-6
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def tiny_mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        num_local_experts=4,
        num_experts_per_tok=2,
        pad_token_id=0,
    )
    return MixtralForCausalLM(config).eval()


class _Experts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 8, 6) * 0.1)  # (experts, out, in)
        self.v = nn.Parameter(torch.randn(5, 8) * 0.1)  # (out, in)

    def forward(self, x):
        return torch.einsum("bo,eoi->bi", x, self.w) + (x @ self.v.T).sum(1, keepdim=True)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.exp = _Experts()

    def forward(self, x):
        return self.exp(self.lin(x))


@pytest.mark.parametrize("target_modules", [[], ["q_proj"]])
def test_mixtral_experts_equal_peft_both_ways(target_modules, tmp_path):
    import peft

    base = tiny_mixtral()
    inputs = llama_inputs()
    theirs, ours = both(base, r=2, target_modules=target_modules, target_parameters=EXPERTS)
    assert trainable_names(ours) == trainable_names(theirs)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    assert max_diff(ours(**inputs).logits, base(**inputs).logits) < ATOL  # B = 0: a no-op
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    expected = theirs(**inputs).logits
    assert max_diff(ours(**inputs).logits, expected) < ATOL
    assert max_diff(expected, base(**inputs).logits) > 1e-3
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    assert sorted(load_file(tmp_path / "ours" / "adapter_model.safetensors")) == sorted(
        load_file(tmp_path / "theirs" / "adapter_model.safetensors")
    )
    assert (
        max_diff(
            peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")(**inputs).logits, expected
        )
        < ATOL
    )
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs")
    assert max_diff(loaded(**inputs).logits, expected) < ATOL


def test_layouts_merge_and_unload():
    base = _Model()
    x = torch.randn(4, 8)
    theirs, ours = both(base, r=2, target_modules=["lin"], target_parameters=["exp.w", "v"])
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    expected = theirs(x)
    outer = ours.base_model.model.exp
    assert outer.parameter_name == "v" and outer.base_layer.parameter_name == "w"  # parameter order nests
    inner = outer.base_layer
    assert inner.lora_A["default"].weight.shape == (6, 6) and inner.lora_B["default"].weight.shape == (8, 6)
    assert (
        max_diff(
            inner.get_delta_weight("default"),
            theirs.base_model.model.exp.base_layer.get_delta_weight("default"),
        )
        < ATOL
    )
    assert max_diff(ours(x), expected) < ATOL
    ours.merge_adapter()
    assert max_diff(ours(x), expected) < 1e-5
    ours.unmerge_adapter()
    assert max_diff(ours.base_model.model.exp.base_layer.base_layer.w, base.exp.w) < 1e-6
    merged = ours.merge_and_unload()
    assert type(merged.exp) is _Experts and max_diff(merged(x), expected) < 1e-5


def test_clear_errors():
    base = _Model()
    for kwargs, error, match in [
        (dict(lora_dropout=0.1), ValueError, "lora_dropout"),
        (dict(use_dora=True), ValueError, "use_dora"),
        (dict(init_lora_weights="pissa"), ValueError, "linear layers only"),
        (dict(target_parameters="exp.v"), TypeError, "list of strings"),
        (dict(target_parameters=["nope"]), Exception, "target_parameters"),
    ]:
        config = dict(r=2, target_modules=[], target_parameters=["exp.v"])
        config.update(kwargs)
        with pytest.raises(error, match=match):
            peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**config))
    with pytest.raises(ValueError, match="already adapted"):
        peftkit.get_peft_model(
            copy.deepcopy(base),
            peftkit.LoraConfig(r=2, target_modules=["lin"], target_parameters=["lin.weight"]),
        )
