"""Block-diagonal LoRA (`use_bdlora`): same factors, outputs and files as peft; merging works."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama, trainable_names
from tests.lora_family.helpers import max_diff

import peftkit

ATOL = 1e-6
TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def _config(lib, **extra):
    bd = lib.BdLoraConfig(
        target_modules_bd_a=["o_proj", "down_proj"], target_modules_bd_b=["q_proj", "v_proj"], nblocks=2
    )
    return lib.LoraConfig(r=4, target_modules=TARGETS, use_bdlora=bd, **extra)


def _pair(base):
    import peft

    theirs = peft.get_peft_model(copy.deepcopy(base), _config(peft))
    ours = peftkit.get_peft_model(copy.deepcopy(base), _config(peftkit))
    return theirs, ours


def test_same_factors_outputs_and_files_as_peft(tmp_path):
    import peft

    base = tiny_llama()
    inputs = llama_inputs()
    theirs, ours = _pair(base)
    assert trainable_names(ours) == trainable_names(theirs)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    prefix = "base_model.model.model.layers.0."
    assert shapes[prefix + "self_attn.q_proj.lora_B.default.weight"] == (32, 2)  # (out, r / nblocks)
    assert shapes[prefix + "self_attn.o_proj.lora_A.default.weight"] == (4, 16)  # (r, in / nblocks)
    assert max_diff(ours(**inputs).logits, base(**inputs).logits) < ATOL
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    expected = theirs(**inputs).logits
    assert max_diff(ours(**inputs).logits, expected) < ATOL
    assert max_diff(expected, base(**inputs).logits) > 1e-3

    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert (
        config["use_bdlora"]
        == json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())["use_bdlora"]
    )
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
    assert isinstance(loaded.peft_config["default"].use_bdlora, peftkit.BdLoraConfig)


def test_block_structure_merge_and_mixed_batch():
    base = tiny_llama()
    inputs = llama_inputs()
    _, ours = _pair(base)
    perturb_adapter_weights(ours)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    B = layer.lora_B["default"].dense_weight()
    assert B.shape == (32, 4) and B[:16, 2:].abs().sum() == 0 and B[16:, :2].abs().sum() == 0
    expected = ours(**inputs).logits
    ours.merge_adapter()  # peft cannot merge bd-LoRA (its delta weight multiplies stacked blocks)
    assert max_diff(ours(**inputs).logits, expected) < 1e-5
    ours.unmerge_adapter()
    ours.eval()
    mixed = ours(**inputs, adapter_names=["default", "__base__"]).logits
    assert max_diff(mixed[0], expected[0]) < 1e-5 and max_diff(mixed[1], base(**inputs).logits[1]) < 1e-5


def test_default_initialisation_distribution():
    """The block-diagonal A is kaiming-uniform over its block fan-in (bound sqrt(6 / (in / n))), B is zero."""
    base = tiny_llama(hidden_size=64, intermediate_size=128)
    _, ours = _pair(base)
    o_proj = ours.base_model.model.model.layers[0].self_attn.o_proj
    A = o_proj.lora_A["default"].weight
    bound = (6 / 32) ** 0.5
    assert A.abs().max() <= bound and A.abs().max() > 0.8 * bound
    assert ours.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.abs().sum() == 0


def test_clear_errors():
    with pytest.raises(ValueError, match="overlapping"):
        peftkit.BdLoraConfig(target_modules_bd_a=["q_proj"], target_modules_bd_b=["q_proj"])
    bd = dict(target_modules_bd_a=["o_proj"], target_modules_bd_b=["q_proj"], nblocks=2)
    with pytest.raises(ValueError, match="neither A nor B"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_bdlora=bd)
        )
    model = tiny_llama()
    with pytest.raises(ValueError, match="not divisible by 3"):
        peftkit.get_peft_model(
            model, peftkit.LoraConfig(r=3, target_modules=["q_proj"], use_bdlora={**bd, "nblocks": 3})
        )
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # rolled back
    with pytest.raises(ValueError, match="use_dora"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(r=4, target_modules=["q_proj"], use_bdlora=bd, use_dora=True)
        )
    with pytest.raises(ValueError, match="block-diagonal"):
        peftkit.get_peft_model(
            tiny_llama(),
            peftkit.LoraConfig(r=4, target_modules=["q_proj"], use_bdlora=bd, init_lora_weights="pissa"),
        )
    loose = peftkit.get_peft_model(
        tiny_llama(),
        peftkit.LoraConfig(
            r=4, target_modules=["q_proj", "v_proj"], use_bdlora={**bd, "match_strict": False}
        ),
    )
    assert type(loose.base_model.model.model.layers[0].self_attn.v_proj.lora_B["default"]) is torch.nn.Linear
