"""Trainable tokens: LoRA's `trainable_token_indices` and the TRAINABLE_TOKENS method, against peft.

Same module tree and trainable parameter names, same outputs (fp32, 1e-6), same file keys; adapters
saved by either library load in the other with the same outputs.
"""

import copy

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama, trainable_names
from tests.lora_family.helpers import max_diff

import peftkit

ATOL = 1e-6


def _pair(base, kind, **kwargs):
    import peft

    if kind == "lora":
        theirs = peft.get_peft_model(
            copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["q_proj"], **kwargs)
        )
        ours = peftkit.get_peft_model(
            copy.deepcopy(base), peftkit.LoraConfig(r=2, target_modules=["q_proj"], **kwargs)
        )
    else:
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.TrainableTokensConfig(**kwargs))
        ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.TrainableTokensConfig(**kwargs))
    return theirs, ours


CASES = [
    ("lora", dict(trainable_token_indices=[1, 2, 5]), False),
    ("lora", dict(trainable_token_indices=[1, 2, 5]), True),
    ("lora", dict(trainable_token_indices={"embed_tokens": [3, 4], "lm_head": [5]}), False),
    ("tokens", dict(token_indices=[1, 2, 5]), False),
    ("tokens", dict(token_indices=[1, 2, 5]), True),
]


def _inputs():
    inputs = llama_inputs()
    inputs["input_ids"][:, -5:] = torch.tensor([1, 2, 3, 4, 5])  # the trained token ids occur
    return inputs


@pytest.mark.parametrize("kind, kwargs, tie", CASES)
def test_same_tree_outputs_and_files_as_peft(kind, kwargs, tie, tmp_path):
    import peft

    base = tiny_llama(tie_word_embeddings=tie)
    inputs = _inputs()
    theirs, ours = _pair(base, kind, **kwargs)
    assert trainable_names(ours) == trainable_names(theirs)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    assert max_diff(ours(**inputs).logits, base(**inputs).logits) < ATOL  # a no-op at initialisation
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    expected = theirs(**inputs).logits
    assert max_diff(ours(**inputs).logits, expected) < ATOL
    assert max_diff(expected, base(**inputs).logits) > 1e-3

    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    ours_file = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    theirs_file = load_file(tmp_path / "theirs" / "adapter_model.safetensors")
    assert sorted(ours_file) == sorted(theirs_file)
    for key in ours_file:
        assert torch.equal(ours_file[key], theirs_file[key]), key
    from_ours = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    from_theirs = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs")
    assert max_diff(from_ours(**inputs).logits, expected) < ATOL
    assert max_diff(from_theirs(**inputs).logits, expected) < ATOL


@pytest.mark.parametrize("tie", [False, True])
def test_merge_unload_and_disable(tie):
    base = tiny_llama(tie_word_embeddings=tie)
    inputs = _inputs()
    ours = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(r=2, target_modules=["q_proj"], trainable_token_indices=[1, 2, 5]),
    )
    perturb_adapter_weights(ours)
    expected = ours(**inputs).logits
    with ours.disable_adapter():
        assert max_diff(ours(**inputs).logits, base(**inputs).logits) < ATOL
    ours.merge_adapter()
    assert max_diff(ours(**inputs).logits, expected) < 1e-5
    ours.unmerge_adapter()
    embedding = ours.base_model.model.model.embed_tokens.token_adapter.base_layer
    assert torch.equal(embedding.weight, base.model.embed_tokens.weight)  # originals restored exactly
    merged = ours.merge_and_unload()
    assert type(merged.model.embed_tokens) is torch.nn.Embedding
    assert type(merged.lm_head) is torch.nn.Linear
    assert max_diff(merged(**inputs).logits, expected) < 1e-5
    rows = merged.model.embed_tokens.weight
    assert not torch.equal(rows[[1, 2, 5]], base.model.embed_tokens.weight[[1, 2, 5]])
    assert torch.equal(rows[[0, 3, 4]], base.model.embed_tokens.weight[[0, 3, 4]])


def test_only_selected_rows_train():
    base = tiny_llama()
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.TrainableTokensConfig(token_indices=[3, 7]))
    delta = ours.base_model.model.model.embed_tokens.trainable_tokens_delta["default"]
    assert delta.shape == (2, 32) and trainable_names(ours) == [
        "base_model.model.model.embed_tokens.trainable_tokens_delta.default"
    ]
    ids = torch.tensor([[3, 5, 7]])
    ours(input_ids=ids).logits.sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0


def test_several_adapters_and_overlap_error():
    base = tiny_llama()
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.TrainableTokensConfig(token_indices=[1, 2]))
    ours.add_adapter("b", peftkit.TrainableTokensConfig(token_indices=[2, 3]))
    layer = ours.base_model.model.model.embed_tokens
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == [
        "base_model.model.model.embed_tokens.trainable_tokens_delta.default"
    ]
    ours.base_model.set_adapter(["default", "b"])
    with pytest.raises(ValueError, match="disjunct"):
        layer(torch.tensor([[1, 2]]))
    with torch.no_grad():
        layer.trainable_tokens_delta["default"].fill_(1.0)
        layer.trainable_tokens_delta["b"].fill_(2.0)
    ours.eval()
    out = ours.base_model.model.model.embed_tokens(
        torch.tensor([[1, 2, 3, 4]] * 2), adapter_names=["default", "b"]
    )
    assert out[0, :3, 0].tolist() == [1.0, 1.0, base.model.embed_tokens.weight[3, 0].item()]
    assert out[1, 1:3, 0].tolist() == [2.0, 2.0]


def test_clear_errors():
    with pytest.raises(TypeError, match="already adapted"):
        peftkit.get_peft_model(
            tiny_llama(),
            peftkit.LoraConfig(r=2, target_modules=["q_proj", "embed_tokens"], trainable_token_indices=[3]),
        )
    with pytest.raises(ValueError, match="token ids"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(r=2, target_modules=["q_proj"], trainable_token_indices=[500])
        )
    with pytest.raises(ValueError, match="no module of that name"):
        peftkit.get_peft_model(
            tiny_llama(),
            peftkit.LoraConfig(r=2, target_modules=["q_proj"], trainable_token_indices={"wte": [1]}),
        )
