"""Activated LoRA (`alora_invocation_tokens`): same outputs and generations as peft."""

import copy

import pytest
import torch
from tests.conftest import perturb_adapter_weights, tiny_llama
from tests.lora_family.helpers import max_diff

import peftkit

ATOL = 1e-6
INVOCATION = [7, 8]
IDS = torch.tensor([[3, 4, 5, 7, 8, 9, 10, 11], [7, 8, 3, 4, 5, 6, 7, 8], [3, 4, 5, 6, 9, 10, 11, 12]])


def _pair(task_type="CAUSAL_LM", **extra):
    import peft

    base = tiny_llama()
    kwargs = dict(
        r=2,
        task_type=task_type,
        target_modules=["q_proj", "v_proj", "o_proj"],
        alora_invocation_tokens=INVOCATION,
    )
    kwargs.update(extra)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**kwargs))
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    return base, theirs.eval(), ours.eval()


def test_adapter_acts_from_the_last_invocation_on_as_in_peft():
    base, theirs, ours = _pair()
    mask = torch.ones_like(IDS)
    mask[1, :2] = 0
    out = ours(input_ids=IDS, attention_mask=mask).logits
    assert max_diff(out, theirs(input_ids=IDS, attention_mask=mask).logits) < ATOL
    changed = (out - base(input_ids=IDS, attention_mask=mask).logits).abs().amax(-1) > 1e-6
    # row 0: from position 3 (invocation start); row 1: its last invocation starts at 6; row 2: none
    assert changed.tolist() == [[False] * 3 + [True] * 5, [False] * 6 + [True] * 2, [False] * 8]


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", None])
def test_explicit_offsets(task_type):
    _, theirs, ours = _pair(task_type)
    offsets = [3, 5, None]
    assert (
        max_diff(
            ours(input_ids=IDS, alora_offsets=offsets).logits,
            theirs(input_ids=IDS, alora_offsets=offsets).logits,
        )
        < ATOL
    )


def test_generation_equals_peft():
    _, theirs, ours = _pair()
    ids = IDS[:2]
    mask = torch.ones_like(ids)
    ours_out = ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(
        ours_out, theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    )


@pytest.mark.parametrize("direction", ["peft_to_peftkit", "peftkit_to_peft"])
def test_files_load_in_the_other_library(direction, tmp_path):
    import peft

    base, theirs, ours = _pair()
    expected = theirs(input_ids=IDS).logits
    saver, lib = (theirs, peftkit) if direction == "peft_to_peftkit" else (ours, peft)
    saver.save_pretrained(tmp_path)
    loaded = lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert max_diff(loaded(input_ids=IDS).logits, expected) < ATOL


def test_merge_and_unsupported_combinations_raise():
    _, _, ours = _pair()
    with pytest.raises(NotImplementedError, match="merging"):
        ours.merge_adapter()
    with pytest.raises(NotImplementedError, match="merging"):
        ours.merge_and_unload()
    with pytest.raises(ValueError, match="not supported with aLoRA"):
        ours(input_ids=IDS, adapter_names=["default", "__base__", "default"])
    with pytest.raises(ValueError, match="unsupported variant"):
        peftkit.get_peft_model(
            tiny_llama(),
            peftkit.LoraConfig(r=2, target_modules=["embed_tokens"], alora_invocation_tokens=[7]),
        )
    with pytest.raises(ValueError, match="use_dora"):
        peftkit.get_peft_model(
            tiny_llama(),
            peftkit.LoraConfig(r=2, target_modules=["q_proj"], alora_invocation_tokens=[7], use_dora=True),
        )
