"""Multitask prompt tuning against peft: per-task prompts (task_ids), save/load both ways, generate,
and initialisation from a trained source adapter (read without pickle)."""

import copy

import pytest
import torch
from tests.conftest import llama_inputs, tiny_llama, tiny_t5

from .helpers import assert_close, make_prompt_pair, output_of

TASK_IDS = torch.tensor([2, 0])


def _pair(model_fn=tiny_llama, task_type="CAUSAL_LM", **extra):
    kwargs = dict(task_type=task_type, num_virtual_tokens=3, num_tasks=3, num_ranks=2, **extra)
    return make_prompt_pair(model_fn, "MultitaskPromptTuningConfig", **kwargs)


@pytest.mark.parametrize(("model_fn", "task_type"), [(tiny_llama, "CAUSAL_LM"), (tiny_t5, "SEQ_2_SEQ_LM")])
def test_forward_matches_peft_per_task(model_fn, task_type):
    """(Encoder-decoder: with decoder_inputs_embeds, the input peft handles.)"""
    _, theirs, ours = _pair(model_fn, task_type)
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    inputs = llama_inputs()
    if task_type == "SEQ_2_SEQ_LM":
        inputs["decoder_inputs_embeds"] = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0))
    got = output_of(ours(**inputs, task_ids=TASK_IDS), task_type)
    assert_close(got, output_of(theirs(**inputs, task_ids=TASK_IDS), task_type))
    other = output_of(ours(**inputs, task_ids=torch.tensor([1, 1])), task_type)
    assert (got - other).abs().max() > 1e-4  # the task changes the prompt


def test_task_ids_are_required():
    _, _, ours = _pair()
    with pytest.raises(ValueError, match="task_ids"):
        ours(**llama_inputs())


@pytest.mark.parametrize("beams", [1, 2])
def test_generate_matches_peft(beams, peft_oracle):
    """peft's tokens: live, or recorded where peft's generation breaks (transformers >= 5.24)."""
    _, theirs, ours = _pair()
    kwargs = dict(
        **llama_inputs(),
        task_ids=TASK_IDS,
        max_new_tokens=5,
        num_beams=beams,
        do_sample=False,
        pad_token_id=0,
    )
    expected = peft_oracle(lambda: theirs.generate(**kwargs), theirs, kwargs)
    assert torch.equal(ours.generate(**kwargs), expected)


def test_save_load_both_ways(tmp_path):
    import peft
    from safetensors.torch import load_file

    import peftkit

    base, theirs, ours = _pair()
    inputs = llama_inputs()
    expected = theirs(**inputs, task_ids=TASK_IDS).logits
    theirs.save_pretrained(tmp_path / "peft")
    ours.save_pretrained(tmp_path / "kit")
    peft_file = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    kit_file = load_file(tmp_path / "kit" / "adapter_model.safetensors")
    assert (
        sorted(kit_file) == sorted(peft_file) == ["prefix_task_cols", "prefix_task_rows", "prompt_embeddings"]
    )
    for key in peft_file:
        assert torch.equal(kit_file[key], peft_file[key])
    ours_loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft")
    peft_loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "kit")
    assert_close(ours_loaded(**inputs, task_ids=TASK_IDS).logits, expected)
    assert_close(peft_loaded(**inputs, task_ids=TASK_IDS).logits, expected)


@pytest.mark.parametrize(
    ("init", "extra"),
    [
        ("AVERAGE_SOURCE_TASKS", {}),
        ("EXACT_SOURCE_TASK", {"prompt_tuning_init_task": 1}),
        ("ONLY_SOURCE_SHARED", {}),
    ],
)
@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_initialisation_from_a_source_adapter_matches_peft(tmp_path, init, extra, suffix):
    import peft
    from safetensors.torch import load_file

    import peftkit

    _, source, _ = _pair()
    source.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    if suffix == "bin":
        torch.save(load_file(path), tmp_path / "source.bin")
        path = tmp_path / "source.bin"
    kwargs = dict(
        task_type="CAUSAL_LM",
        num_virtual_tokens=3,
        num_tasks=1,
        num_ranks=2,
        prompt_tuning_init=init,
        prompt_tuning_init_state_dict_path=str(path),
        **extra,
    )
    ours = peftkit.get_peft_model(tiny_llama(), peftkit.MultitaskPromptTuningConfig(**kwargs))
    theirs = peft.get_peft_model(tiny_llama(), peft.MultitaskPromptTuningConfig(**kwargs))
    assert torch.equal(
        ours.prompt_encoder["default"].embedding.weight, theirs.prompt_encoder["default"].embedding.weight
    )
    if init != "ONLY_SOURCE_SHARED":  # the factors come from the source too (otherwise: fresh random draws)
        for name in ("prefix_task_cols", "prefix_task_rows"):
            assert torch.allclose(
                getattr(ours.prompt_encoder["default"], name), getattr(theirs.prompt_encoder["default"], name)
            )


def test_source_file_is_never_unpickled(tmp_path):
    """A torch file holding a pickled object (not just tensors) is refused."""
    import peftkit

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.bin"
    torch.save({"prompt_embeddings": Payload()}, path)
    config = peftkit.MultitaskPromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=3,
        prompt_tuning_init="ONLY_SOURCE_SHARED",
        prompt_tuning_init_state_dict_path=str(path),
    )
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        peftkit.get_peft_model(tiny_llama(), config)


def test_source_inits_need_a_path_and_one_task(tmp_path):
    import peftkit

    with pytest.raises(ValueError, match="prompt_tuning_init_state_dict_path"):
        peftkit.MultitaskPromptTuningConfig(num_virtual_tokens=3, prompt_tuning_init="EXACT_SOURCE_TASK")
    _, source, _ = _pair()
    source.save_pretrained(tmp_path)
    config = peftkit.MultitaskPromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=3,
        num_tasks=2,
        prompt_tuning_init="AVERAGE_SOURCE_TASKS",
        prompt_tuning_init_state_dict_path=str(tmp_path / "adapter_model.safetensors"),
    )
    with pytest.raises(ValueError, match="num_tasks=1"):
        peftkit.get_peft_model(tiny_llama(), config)


@pytest.mark.parametrize("decoder", ["labels", "decoder_inputs_embeds"])
def test_seq2seq_decoder_prompts_match_peft(decoder):
    """On encoder-decoder models the second block of virtual tokens goes in front of the decoder input."""
    _, theirs, ours = _pair(tiny_t5, "SEQ_2_SEQ_LM")
    inputs = llama_inputs()
    if decoder == "labels":
        inputs["labels"] = torch.tensor([[0, 5, 6], [0, 7, 8]])
    else:
        inputs["decoder_inputs_embeds"] = torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(0))
    expected, got = theirs(**inputs, task_ids=TASK_IDS), ours(**inputs, task_ids=TASK_IDS)
    assert got.logits.shape[1] == 3 + (3 if decoder == "labels" else 2)
    assert_close(got.logits, expected.logits)
    if decoder == "labels":
        assert abs(got.loss.item() - expected.loss.item()) <= 1e-5


def test_seq2seq_decoder_input_ids_are_embedded():
    """peft fails on decoder_input_ids here; peftkit embeds them, so ids and their embeddings agree."""
    _, _, ours = _pair(tiny_t5, "SEQ_2_SEQ_LM")
    inputs = llama_inputs()
    ids = torch.tensor([[0, 5], [0, 6]])
    by_ids = ours(**inputs, decoder_input_ids=ids, task_ids=TASK_IDS).logits
    by_embeds = ours(**inputs, decoder_inputs_embeds=ours.word_embeddings(ids), task_ids=TASK_IDS).logits
    assert by_ids.shape[1] == 3 + 2
    assert torch.equal(by_ids, by_embeds)
