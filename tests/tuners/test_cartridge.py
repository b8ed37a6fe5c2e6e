"""Cartridge against peft: the key/value prefix as parameters (frozen leading tokens), outputs of every task
class and generate() on transformers 5 caches, files both ways, the cache initialisers and composition.

peft 0.21.2's prompt learning cannot run on transformers >= 5.24 (see tests/oracle.py): its forward and
generate answers come from the `peft_oracle` fixture, live where peft runs and recorded
(tests/peft_reference/tuners__test_cartridge.safetensors) where it does not. peft's file and cache helpers
need no model forward and run live everywhere.
"""

import copy
import json

import peft
import pytest
import torch
from peft import mapping as peft_mapping
from safetensors.torch import load_file
from tests.conftest import llama_inputs, tiny_bert, tiny_llama, tiny_llama_seq_cls, tiny_t5, trainable_names
from tests.oracle import portable_init_
from tests.prompt_learning.helpers import ATOL, assert_close, output_of
from tests.tuners.method_checks import check_config_fields

import peftkit
from peftkit import mapping as peftkit_mapping
from peftkit.tuners.cartridge.utils import (
    compose_cartridge_adapters,
    initialize_kv_prefix_from_past_key_values,
    initialize_kv_prefix_from_text,
    prompt_embeddings_from_past_key_values,
)
from peftkit.utils.cache_names import output_cache
from peftkit.utils.warnings import AdapterLoadError

TASKS = {
    "llama_causal": (tiny_llama, "CAUSAL_LM"),
    "llama_seq_cls": (tiny_llama_seq_cls, "SEQ_CLS"),
    "bert_seq_cls": (lambda: tiny_bert(task="seq_cls"), "SEQ_CLS"),
    "bert_qa": (lambda: tiny_bert(task="qa"), "QUESTION_ANS"),
    "t5_seq2seq": (tiny_t5, "SEQ_2_SEQ_LM"),
}


def cartridge_pair(model_fn, task_type: str, seed: int = 0, **config):
    """The same Cartridge in peft and in peftkit. Every weight, the frozen prefix tokens included, is drawn
    by `portable_init_`, so the recorded peft answers hold on every transformers version."""
    config = {"num_virtual_tokens": 4, "num_frozen_tokens": 1, **config}
    base = portable_init_(model_fn(), seed=1000)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.CartridgeConfig(task_type=task_type, **config))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.CartridgeConfig(task_type=task_type, **config))
    portable_init_(theirs.prompt_encoder, seed=seed)
    with torch.no_grad():  # portable_init_ draws matrices small; a prefix of N(0, 1)-scale values steers more
        for param in theirs.prompt_encoder.parameters():
            param.mul_(8.0)
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return base, theirs.eval(), ours.eval()


def task_inputs(task_key: str) -> dict[str, torch.Tensor]:
    inputs = llama_inputs()  # left padding in the first row
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
def test_outputs_match_peft(task_key, peft_oracle):
    model_fn, task_type = TASKS[task_key]
    base, theirs, ours = cartridge_pair(model_fn, task_type)
    inputs = task_inputs(task_key)

    def answer(out) -> dict:
        return {"output": output_of(out, task_type), "loss": getattr(out, "loss", None)}

    expected = peft_oracle(lambda: answer(theirs(**inputs)), theirs, inputs)
    got = ours(**inputs)
    assert_close(output_of(got, task_type), expected["output"])
    assert abs(got.loss.item() - expected["loss"].item()) <= ATOL
    dropped = ("start_positions", "end_positions") + (() if task_type == "SEQ_2_SEQ_LM" else ("labels",))
    with torch.no_grad():
        base_out = output_of(base(**{k: v for k, v in inputs.items() if k not in dropped}), task_type)
    assert (base_out - output_of(got, task_type)).abs().max().item() > 1e-3  # the prefix is applied


MODES = {
    "greedy": {"do_sample": False},
    "sampling": {"do_sample": True, "top_k": 0},
    "beam": {"num_beams": 2},
}


def _generate(model, mode: str):
    torch.manual_seed(5)
    return model.generate(**llama_inputs(), max_new_tokens=5, pad_token_id=0, **MODES[mode])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("task_key", ["llama_causal", "t5_seq2seq"])
def test_generate_matches_peft(task_key, mode, peft_oracle):
    model_fn, task_type = TASKS[task_key]
    base, theirs, ours = cartridge_pair(model_fn, task_type, seed=1)
    expected = peft_oracle(lambda: _generate(theirs, mode), theirs, llama_inputs(), MODES[mode])
    got = _generate(ours, mode)
    assert torch.equal(got, expected)
    if mode == "greedy":
        assert not torch.equal(got, _generate(base, mode))
        with ours.disable_adapter():
            assert torch.equal(_generate(ours, mode), _generate(base, mode))


def test_trainable_parameters_and_frozen_tokens_match_peft():
    _, theirs, ours = cartridge_pair(tiny_llama, "CAUSAL_LM", num_virtual_tokens=5, num_frozen_tokens=2)
    assert trainable_names(ours) == trainable_names(theirs) == ["prompt_encoder.default.trainable_embedding"]
    assert ours.prompt_encoder["default"].frozen_embedding.shape == (2, 2 * 2 * 16)  # GQA: 2 kv heads of 8
    ours.train()
    loss = ours(**task_inputs("llama_causal")).loss
    loss.backward()
    assert ours.prompt_encoder["default"].trainable_embedding.grad.abs().max() > 0
    assert ours.prompt_encoder["default"].frozen_embedding.grad is None
    _, theirs0, ours0 = cartridge_pair(tiny_llama, "CAUSAL_LM", num_frozen_tokens=0)
    assert ours0.prompt_encoder["default"].frozen_embedding is None
    assert sorted(ours0.state_dict()) == sorted(theirs0.state_dict())


def test_training_lowers_loss():
    _, _, ours = cartridge_pair(tiny_llama, "CAUSAL_LM")
    ours.train()
    inputs = task_inputs("llama_causal")
    optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(5):
        loss = ours(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("safe", [True, False])
def test_files_move_both_ways(tmp_path, safe):
    _, theirs, ours = cartridge_pair(tiny_llama, "CAUSAL_LM", num_virtual_tokens=5, num_frozen_tokens=2)
    theirs.save_pretrained(str(tmp_path / "theirs"), safe_serialization=safe)
    ours.save_pretrained(str(tmp_path / "ours"), safe_serialization=safe)
    configs = [json.loads((tmp_path / s / "adapter_config.json").read_text()) for s in ("theirs", "ours")]
    assert configs[1] == configs[0]
    if safe:
        files = [load_file(str(tmp_path / s / "adapter_model.safetensors")) for s in ("theirs", "ours")]
        assert files[1].keys() == files[0].keys() == {"prompt_embeddings"}
        assert torch.equal(files[1]["prompt_embeddings"], files[0]["prompt_embeddings"])
    base = portable_init_(tiny_llama(), seed=1000)
    loaded_ours = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "theirs")).eval()
    loaded_theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours")).eval()
    expected = ours.state_dict()
    for loaded in (loaded_ours, loaded_theirs):
        state = loaded.state_dict()
        for key in ("prompt_encoder.default.frozen_embedding", "prompt_encoder.default.trainable_embedding"):
            assert torch.equal(state[key], expected[key]), key
    inputs = llama_inputs()
    with torch.no_grad():
        assert_close(loaded_ours(**inputs).logits, ours(**inputs).logits, 0.0)
    assert not any(p.requires_grad for p in loaded_ours.parameters())  # loaded for inference, as in peft


def test_prefix_from_a_cache_equals_peft_s_and_is_the_prefill_itself():
    """A Cartridge initialised from the cache of a prefill on text T makes the model continue as if it had
    read T: the logits of the input equal the base model's on T + input."""
    _, _, ours = cartridge_pair(tiny_llama, "CAUSAL_LM", num_virtual_tokens=6)
    base = ours.get_base_model()
    text_ids = torch.randint(1, 128, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = output_cache(base(input_ids=text_ids, use_cache=True))
    expected = peft.tuners.cartridge.utils.prompt_embeddings_from_past_key_values(cache, num_virtual_tokens=6)
    legacy = [(layer.keys, layer.values) for layer in cache.layers]
    for source in (cache, legacy):
        assert torch.equal(prompt_embeddings_from_past_key_values(source, num_virtual_tokens=6), expected)
    loaded = initialize_kv_prefix_from_past_key_values(ours, past_key_values=cache)
    assert torch.equal(loaded, expected)
    assert torch.equal(ours.prompt_encoder["default"].weight, expected)
    input_ids = torch.randint(1, 128, (1, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        continued = ours(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
        reference = base(input_ids=torch.cat([text_ids, input_ids], dim=1)).logits[:, 6:]
    assert_close(continued, reference, 1e-5)


class WordTokenizer:
    """A stand-in tokenizer without a chat template: one id per whitespace-separated word."""

    def __call__(self, text, return_tensors=None, truncation=False, max_length=None):
        ids = [1 + (sum(map(ord, word)) % 120) for word in text.split()]
        if truncation and max_length is not None:
            ids = ids[:max_length]
        return {"input_ids": torch.tensor([ids])}


def test_prefix_from_text_matches_peft(peft_oracle):
    _, theirs, ours = cartridge_pair(tiny_llama, "CAUSAL_LM", num_virtual_tokens=3)
    text = "a cartridge holds the cache of this text"
    kwargs = {"text": text, "max_length": 6}

    def theirs_answer():
        return peft.tuners.cartridge.utils.initialize_kv_prefix_from_text(theirs, WordTokenizer(), **kwargs)

    expected = peft_oracle(theirs_answer, theirs, kwargs)
    got = initialize_kv_prefix_from_text(ours, WordTokenizer(), **kwargs)
    assert_close(got, expected, 1e-6)
    assert torch.equal(ours.prompt_encoder["default"].weight, got)


def test_compose_concatenates_as_peft(tmp_path):
    folders = []
    for seed, frozen in ((0, 1), (3, 0)):
        _, _, ours = cartridge_pair(tiny_llama, "CAUSAL_LM", seed=seed, num_frozen_tokens=frozen)
        folders.append(str(tmp_path / f"part{seed}"))
        ours.save_pretrained(folders[-1])
    compose_cartridge_adapters(folders, output_path=str(tmp_path / "ours"))
    peft.compose_cartridge_adapters(folders, output_path=str(tmp_path / "theirs"))
    configs = [json.loads((tmp_path / s / "adapter_config.json").read_text()) for s in ("theirs", "ours")]
    assert (
        configs[1] == configs[0]
        and configs[0]["num_virtual_tokens"] == 8
        and configs[0]["num_frozen_tokens"] == 1
    )
    files = [load_file(str(tmp_path / s / "adapter_model.safetensors")) for s in ("theirs", "ours")]
    assert torch.equal(files[1]["prompt_embeddings"], files[0]["prompt_embeddings"])
    composed = peftkit.PeftModel.from_pretrained(
        portable_init_(tiny_llama(), seed=1000), str(tmp_path / "ours")
    )
    parts = [load_file(f"{folder}/adapter_model.safetensors")["prompt_embeddings"] for folder in folders]
    assert torch.equal(composed.prompt_encoder["default"].weight, torch.cat(parts))


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="num_frozen_tokens` must be <= `num_virtual_tokens"):
        peftkit.CartridgeConfig(num_virtual_tokens=2, num_frozen_tokens=3)
    with pytest.raises(ValueError, match="num_frozen_tokens` must be an integer >= 0"):
        peftkit.CartridgeConfig(num_virtual_tokens=2, num_frozen_tokens=-1)
    _, _, ours = cartridge_pair(tiny_llama, "CAUSAL_LM")
    with pytest.raises(ValueError, match="adapter_names="):
        ours(**llama_inputs(), adapter_names=["default", "default"])
    two = [(torch.zeros(2, 2, 5, 8), torch.zeros(2, 2, 5, 8))]
    with pytest.raises(ValueError, match="single-sequence prefill"):
        prompt_embeddings_from_past_key_values(two, num_virtual_tokens=3)
    with pytest.raises(ValueError, match="Need at least 6 cached tokens"):
        prompt_embeddings_from_past_key_values([(t[:1], t[:1]) for t, _ in two], num_virtual_tokens=6)
    with pytest.raises(TypeError, match="Unsupported cache type"):
        prompt_embeddings_from_past_key_values(object(), num_virtual_tokens=1)
    with pytest.raises(ValueError, match="Invalid `prompt_embeddings` shape"):
        ours.prompt_encoder["default"].load_prompt_embeddings(torch.zeros(3, 64))
    projected = peftkit.get_peft_model(
        tiny_llama(),
        peftkit.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, prefix_projection=True),
    )
    with pytest.raises(ValueError, match="prefix_projection=True"):
        initialize_kv_prefix_from_past_key_values(projected, past_key_values=two)
    with pytest.raises(ValueError, match="at least 2 adapters"):
        compose_cartridge_adapters([str(tmp_path)], output_path=str(tmp_path / "out"))
    ours.save_pretrained(str(tmp_path / "cartridge"))
    peftkit.get_peft_model(
        tiny_llama(), peftkit.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    ).save_pretrained(str(tmp_path / "prefix"))
    with pytest.raises(ValueError, match="is not a CARTRIDGE adapter"):
        compose_cartridge_adapters(
            [str(tmp_path / "cartridge"), str(tmp_path / "prefix")], output_path=str(tmp_path / "out")
        )


def test_prefix_tuning_can_be_initialised_from_a_cache_too():
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    )
    with torch.no_grad():
        cache = output_cache(model.get_base_model()(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True))
    loaded = initialize_kv_prefix_from_past_key_values(model, past_key_values=cache)
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, loaded)


def test_registered_as_peft_registers_it():
    cartridge = peftkit.PeftType.CARTRIDGE
    assert peftkit_mapping.PEFT_TYPE_TO_TUNER_MAPPING[cartridge] is peftkit.CartridgeEncoder
    assert peft_mapping.PEFT_TYPE_TO_TUNER_MAPPING[peft.PeftType.CARTRIDGE].__name__ == "CartridgeEncoder"
    ours_prefix = peftkit_mapping.PEFT_TYPE_TO_PREFIX_MAPPING[cartridge]
    assert ours_prefix == peft_mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft.PeftType.CARTRIDGE] == "cartridge_"
    for name in ("compose_cartridge_adapters", "initialize_kv_prefix_from_text", "CartridgeConfig"):
        assert hasattr(peftkit, name) and hasattr(peft, name)


def test_config_fields_and_defaults_are_peft_s():
    check_config_fields("CartridgeConfig")


def test_truncated_file_is_a_clear_error(tmp_path):
    base, _, ours = cartridge_pair(tiny_llama, "CAUSAL_LM")
    ours.save_pretrained(str(tmp_path))
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(AdapterLoadError, match="truncated or corrupt"):
        peftkit.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
