"""LoRA's `layer_replication`: the deeper model, its adapters and files, against peft."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_bert, tiny_llama, trainable_names
from tests.lora_family.helpers import both, max_diff

import peftkit

ATOL = 1e-6
CONFIG = dict(r=2, target_modules=["q_proj", "v_proj"], layer_replication=[[0, 2], [1, 3]])


def test_same_model_outputs_and_generation_as_peft():
    base = tiny_llama(num_hidden_layers=3)
    inputs = llama_inputs()
    theirs, ours = both(base, task_type="CAUSAL_LM", **CONFIG)
    assert trainable_names(ours) == trainable_names(theirs)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    layers = ours.base_model.model.model.layers
    assert len(layers) == 4 and ours.base_model.model.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
    # positions 1 and 2 are the same original layer: shared base weights, separate modules and adapters
    assert layers[1].self_attn.q_proj.base_layer.weight is layers[2].self_attn.q_proj.base_layer.weight
    assert layers[1].self_attn.q_proj is not layers[2].self_attn.q_proj
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    assert max_diff(ours(**inputs).logits, theirs(**inputs).logits) < ATOL
    ids = inputs["input_ids"][:1]
    generated = ours.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(generated, theirs.generate(input_ids=ids, max_new_tokens=5, do_sample=False))


@pytest.mark.parametrize("direction", ["peft_to_peftkit", "peftkit_to_peft"])
def test_files_load_in_the_other_library(direction, tmp_path):
    import peft

    base = tiny_llama(num_hidden_layers=3)
    inputs = llama_inputs()
    theirs, ours = both(base, **CONFIG)
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    expected = theirs(**inputs).logits
    saver, loader = (theirs, peftkit) if direction == "peft_to_peftkit" else (ours, peft)
    saver.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert any(".layers.3." in k for k in keys) and len(keys) == 16  # 4 layers x 2 modules x (A, B)
    loaded = loader.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert max_diff(loaded(**inputs).logits, expected) < ATOL


def test_bert_and_second_adapter():
    base = tiny_bert()
    ours = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(r=2, target_modules=["query"], layer_replication=[[0, 2], [1, 2]]),
    )
    assert len(ours.base_model.model.bert.encoder.layer) == 3
    ours.add_adapter(
        "b", peftkit.LoraConfig(r=2, target_modules=["query"], layer_replication=[[0, 2], [1, 2]])
    )
    assert len(ours.base_model.model.bert.encoder.layer) == 3  # replicated once
    with pytest.raises(ValueError, match="same layer_replication"):
        ours.add_adapter("c", peftkit.LoraConfig(r=2, target_modules=["query"], layer_replication=[[0, 1]]))


def test_merge_is_refused_and_bad_ranges_raise():
    ours = peftkit.get_peft_model(tiny_llama(num_hidden_layers=3), peftkit.LoraConfig(**CONFIG))
    with pytest.raises(ValueError, match="share their base weights"):
        ours.merge_and_unload()
    with pytest.raises(ValueError, match="share their base weights"):
        ours.merge_adapter()
    assert type(ours.unload().model.layers[0].self_attn.q_proj) is torch.nn.Linear
    with pytest.raises(ValueError, match=r"\[start, end\)"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(r=2, target_modules=["q_proj"], layer_replication=[[0, 9]])
        )
