"""Forward of every prompt-learning method and task class against peft: same module tree (strict
state-dict load), same outputs (1e-5) and losses, on batches with left padding."""

import pytest
import torch
from tests.conftest import llama_inputs, tiny_bert, tiny_llama, tiny_llama_seq_cls, tiny_t5, trainable_names

from .helpers import ATOL, assert_close, make_prompt_pair, output_of

METHODS = {
    "prompt": ("PromptTuningConfig", {}),
    "prefix": ("PrefixTuningConfig", {}),
    "prefix_projection": ("PrefixTuningConfig", {"prefix_projection": True, "encoder_hidden_size": 16}),
    "ptuning_mlp": ("PromptEncoderConfig", {"encoder_hidden_size": 16}),
    "ptuning_lstm": (
        "PromptEncoderConfig",
        {"encoder_hidden_size": 16, "encoder_reparameterization_type": "LSTM"},
    ),
}

TASKS = {
    "llama_causal": (tiny_llama, "CAUSAL_LM"),
    "llama_seq_cls": (tiny_llama_seq_cls, "SEQ_CLS"),
    "bert_seq_cls": (lambda: tiny_bert(task="seq_cls"), "SEQ_CLS"),
    "bert_token_cls": (lambda: tiny_bert(task="token_cls"), "TOKEN_CLS"),
    "bert_qa": (lambda: tiny_bert(task="qa"), "QUESTION_ANS"),
    "bert_feature": (lambda: tiny_bert(task="feature"), "FEATURE_EXTRACTION"),
    "t5_seq2seq": (tiny_t5, "SEQ_2_SEQ_LM"),
}


def task_inputs(task_key: str) -> dict[str, torch.Tensor]:
    inputs = llama_inputs()  # left padding in the first row
    if task_key.startswith("bert") and task_key != "bert_qa":
        inputs["token_type_ids"] = torch.ones_like(inputs["input_ids"])
    if task_key == "llama_causal":
        inputs["labels"] = inputs["input_ids"].clone()
    if task_key.endswith("seq_cls"):
        inputs["labels"] = torch.tensor([0, 2])
    if task_key == "bert_qa":
        inputs.update(start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 4]))
    if task_key == "t5_seq2seq":
        inputs["labels"] = torch.tensor([[0, 5, 6], [0, 7, 8]])
    return inputs


@pytest.mark.parametrize("task_key", list(TASKS))
@pytest.mark.parametrize("method", list(METHODS))
def test_outputs_match_peft(method, task_key, peft_oracle):
    """peft's outputs: live, or recorded where peft cannot run prefix tuning (transformers >= 5.24)."""
    model_fn, task_type = TASKS[task_key]
    config_name, extra = METHODS[method]
    base, theirs, ours = make_prompt_pair(
        model_fn, config_name, task_type=task_type, num_virtual_tokens=3, **extra
    )
    inputs = task_inputs(task_key)

    def answer(out) -> dict:
        return {"output": output_of(out, task_type), "loss": getattr(out, "loss", None)}

    expected = peft_oracle(lambda: answer(theirs(**inputs)), theirs, inputs)
    got = ours(**inputs)
    assert_close(output_of(got, task_type), expected["output"])
    loss = getattr(got, "loss", None)
    assert (loss is None) == (expected["loss"] is None)
    if loss is not None:
        assert abs(loss.item() - expected["loss"].item()) <= ATOL
    # the adapter changes the output: the comparison above is not a comparison of two base models
    dropped = ("start_positions", "end_positions") + (() if task_type == "SEQ_2_SEQ_LM" else ("labels",))
    plain = {k: v for k, v in inputs.items() if k not in dropped}
    with torch.no_grad():
        base_out = output_of(base(**plain), task_type)
    ours_out = output_of(got, task_type)
    if base_out.shape == ours_out.shape:
        assert (base_out - ours_out).abs().max().item() > 1e-3
    else:  # the virtual tokens are part of the output (prompt tuning on token-level outputs)
        assert ours_out.shape[1] == base_out.shape[1] + 3


@pytest.mark.parametrize("task_key", list(TASKS))
@pytest.mark.parametrize("method", list(METHODS))
def test_trainable_parameters_match_peft(method, task_key):
    model_fn, task_type = TASKS[task_key]
    config_name, extra = METHODS[method]
    _, theirs, ours = make_prompt_pair(
        model_fn, config_name, task_type=task_type, num_virtual_tokens=3, **extra
    )
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    assert trainable_names(ours) == trainable_names(theirs)
    base_params = [n for n, p in ours.base_model.named_parameters() if p.requires_grad]
    assert all(".modules_to_save." in n for n in base_params), base_params  # only the new head trains


def test_causal_lm_labels_and_mask_are_extended():
    """Prompt tuning: the virtual tokens get label -100 and attention 1, and the logits cover them."""
    _, _, ours = make_prompt_pair(
        tiny_llama, "PromptTuningConfig", task_type="CAUSAL_LM", num_virtual_tokens=4
    )
    seen = {}
    hook = ours.base_model.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    inputs = llama_inputs()
    out = ours(**inputs, labels=inputs["input_ids"])
    hook.remove()
    assert out.logits.shape[1] == 7 + 4
    assert seen["labels"][:, :4].eq(-100).all() and torch.equal(seen["labels"][:, 4:], inputs["input_ids"])
    assert seen["attention_mask"][:, :4].eq(1).all()
    assert torch.equal(seen["attention_mask"][:, 4:], inputs["attention_mask"])


def test_prefix_is_a_transformers_cache_with_gqa_shapes():
    """Prefix tuning on a GQA Llama: a DynamicCache whose keys have the model's key/value head count."""
    from transformers import DynamicCache

    _, theirs, ours = make_prompt_pair(
        tiny_llama, "PrefixTuningConfig", task_type="CAUSAL_LM", num_virtual_tokens=5
    )
    cache = ours.get_prompt(batch_size=2)
    expected = theirs.get_prompt(batch_size=2)
    assert isinstance(cache, DynamicCache) and len(cache.layers) == 2
    for mine, peft_layer in zip(cache.layers, expected.layers, strict=True):
        assert mine.keys.shape == (2, 2, 5, 8)  # batch, num_key_value_heads, tokens, head_dim
        assert torch.equal(mine.keys, peft_layer.keys) and torch.equal(mine.values, peft_layer.values)


@pytest.mark.parametrize(("num_layers", "num_decoder_layers"), [(2, 2), (3, 3), (5, 5), (4, 2)])
def test_encoder_decoder_prefix_layout_matches_peft(num_layers, num_decoder_layers):
    """The decoder layers of an encoder-decoder model receive the same prefix blocks as with peft."""
    from transformers import EncoderDecoderCache, T5Config, T5ForConditionalGeneration

    def t5():
        torch.manual_seed(0)
        config = T5Config(
            d_model=8,
            d_ff=16,
            d_kv=4,
            num_layers=num_layers,
            num_decoder_layers=num_decoder_layers,
            num_heads=2,
            vocab_size=32,
            decoder_start_token_id=0,
        )
        return T5ForConditionalGeneration(config).eval()

    _, theirs, ours = make_prompt_pair(
        t5, "PrefixTuningConfig", task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2
    )
    cache, expected = ours.get_prompt(batch_size=1), theirs.get_prompt(batch_size=1)
    assert isinstance(cache, EncoderDecoderCache) and len(cache.cross_attention_cache.layers) == 0
    assert cache.is_updated == expected.is_updated
    pairs = zip(cache.self_attention_cache.layers, expected.self_attention_cache.layers, strict=True)
    for mine, peft_layer in pairs:
        assert torch.equal(mine.keys, peft_layer.keys) and torch.equal(mine.values, peft_layer.values)


def test_prompt_embedding_to_save_matches_peft():
    for config_name, extra in METHODS.values():
        _, theirs, ours = make_prompt_pair(
            tiny_llama, config_name, task_type="CAUSAL_LM", num_virtual_tokens=3, **extra
        )
        assert_close(
            ours.get_prompt_embedding_to_save("default"), theirs.get_prompt_embedding_to_save("default")
        )


def test_disable_adapter_gives_the_base_model():
    base, _, ours = make_prompt_pair(
        tiny_llama, "PrefixTuningConfig", task_type="CAUSAL_LM", num_virtual_tokens=3
    )
    inputs = llama_inputs()
    with ours.disable_adapter():
        disabled = ours(**inputs).logits
    assert torch.equal(disabled, base(**inputs).logits)
    assert (ours(**inputs).logits - disabled).abs().max() > 1e-3  # enabled again after the block


def test_position_ids_are_ignored_with_a_warning_as_in_peft():
    _, theirs, ours = make_prompt_pair(
        tiny_llama, "PromptTuningConfig", task_type="CAUSAL_LM", num_virtual_tokens=3
    )
    inputs = llama_inputs()
    positions = torch.arange(7).expand(2, 7)
    with pytest.warns(UserWarning, match="Position ids are not supported"):
        got = ours(**inputs, position_ids=positions).logits
    assert_close(got, theirs(**inputs, position_ids=positions).logits)


def test_token_classification_labels_cover_the_virtual_tokens():
    """peft fails here (labels shorter than the logits); peftkit gives the virtual tokens label -100, so the
    loss is the loss over the real tokens only."""
    _, _, ours = make_prompt_pair(
        lambda: tiny_bert(task="token_cls"), "PromptTuningConfig", task_type="TOKEN_CLS", num_virtual_tokens=3
    )
    inputs = llama_inputs()
    labels = torch.randint(0, 3, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    out = ours(**inputs, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 3:].reshape(-1, 3), labels.reshape(-1))
    assert torch.allclose(out.loss, expected, atol=1e-6)
