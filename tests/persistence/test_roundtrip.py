"""Adapters move both ways between peft 0.21 and peftkit: same files, same outputs.

For every case peft and peftkit hold the same perturbed adapter (B starts at zero, so the weights are
moved off their init first) and each saves it. Then peftkit loads peft's folder and peft loads
peftkit's folder onto fresh copies of the base model, and the outputs must equal peft's in-memory
model within 1e-6 (fp32). The files themselves must match too: same safetensors keys, shapes and
dtypes, and an adapter_config.json with exactly the keys peft writes.
"""

from __future__ import annotations

import peft
import pytest
import torch
from tests.conftest import (
    conv_net,
    llama_inputs,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_llama_seq_cls,
    tiny_t5,
)
from tests.persistence.helpers import ATOL, file_layout, fresh, max_diff, read_config, save_both

import peftkit

_IDS = torch.randint(1, 128, (2, 6), generator=torch.Generator().manual_seed(3))
_T5_INPUTS = {"input_ids": _IDS, "decoder_input_ids": _IDS[:, :4]}
_CONV_INPUTS = {"input_ids": torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(4))}

# name -> (base builder, LoraConfig kwargs, task_type, inputs)
CASES = {
    "lora_q_v": (tiny_llama, {"target_modules": ["q_proj", "v_proj"]}, "CAUSAL_LM", llama_inputs()),
    "all_linear": (tiny_llama, {"target_modules": "all-linear", "r": 4}, "CAUSAL_LM", llama_inputs()),
    "dora": (
        tiny_llama,
        {"target_modules": ["q_proj", "v_proj"], "use_dora": True},
        "CAUSAL_LM",
        llama_inputs(),
    ),
    "rslora": (
        tiny_llama,
        {"target_modules": ["q_proj"], "use_rslora": True, "r": 4, "lora_alpha": 16},
        "CAUSAL_LM",
        llama_inputs(),
    ),
    "lora_bias": (
        tiny_llama,
        {"target_modules": ["q_proj", "o_proj"], "lora_bias": True},
        "CAUSAL_LM",
        llama_inputs(),
    ),
    "embedding": (tiny_llama, {"target_modules": ["embed_tokens", "q_proj"]}, "CAUSAL_LM", llama_inputs()),
    "gpt2_conv1d": (tiny_gpt2, {"target_modules": ["c_attn", "c_proj"]}, "CAUSAL_LM", llama_inputs()),
    "conv2d": (conv_net, {"target_modules": ["conv2d", "conv2d_1x1", "lin"]}, None, _CONV_INPUTS),
    "seq_cls_head": (tiny_llama_seq_cls, {"target_modules": ["q_proj", "v_proj"]}, "SEQ_CLS", llama_inputs()),
    "modules_to_save": (
        tiny_llama_seq_cls,
        {"target_modules": ["q_proj"], "modules_to_save": ["score"]},
        None,
        llama_inputs(),
    ),
    "t5_seq2seq": (tiny_t5, {"target_modules": ["q", "v"]}, "SEQ_2_SEQ_LM", _T5_INPUTS),
    "bert_token_cls": (
        lambda: tiny_bert(task="token_cls"),
        {"target_modules": ["query", "value"]},
        "TOKEN_CLS",
        {"input_ids": _IDS},
    ),
}


def outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out if torch.is_tensor(out) else out.logits


@pytest.fixture(scope="module", params=sorted(CASES))
def saved(request, tmp_path_factory):
    model_fn, config, task, inputs = CASES[request.param]
    base, theirs, ours, peft_dir, kit_dir = save_both(
        tmp_path_factory.mktemp(request.param), model_fn, config, task
    )
    return {
        "base": base,
        "theirs": theirs,
        "ours": ours,
        "peft_dir": peft_dir,
        "kit_dir": kit_dir,
        "inputs": inputs,
    }


def test_peft_saves_peftkit_loads(saved):
    reference = outputs(saved["theirs"], saved["inputs"])
    loaded = peftkit.PeftModel.from_pretrained(fresh(saved["base"]), saved["peft_dir"])
    assert type(loaded).__name__ == type(saved["theirs"]).__name__  # task class from task_type
    assert max_diff(outputs(loaded, saved["inputs"]), reference) <= ATOL


def test_peftkit_saves_peft_loads(saved):
    reference = outputs(saved["theirs"], saved["inputs"])
    loaded = peft.PeftModel.from_pretrained(fresh(saved["base"]), saved["kit_dir"])
    assert max_diff(outputs(loaded, saved["inputs"]), reference) <= ATOL


def test_peftkit_round_trip(saved):
    reference = outputs(saved["ours"], saved["inputs"])
    loaded = peftkit.PeftModel.from_pretrained(fresh(saved["base"]), saved["kit_dir"])
    assert max_diff(outputs(loaded, saved["inputs"]), reference) <= ATOL


def test_same_weight_file_layout(saved):
    assert file_layout(saved["kit_dir"]) == file_layout(saved["peft_dir"])


def test_config_has_exactly_peft_keys_and_values(saved):
    theirs, ours = read_config(saved["peft_dir"]), read_config(saved["kit_dir"])
    assert set(ours) == set(theirs)  # no key peft 0.21 does not know, none missing
    for key in ("target_modules",):  # sets: peft writes them in set order
        mine, reference = ours.pop(key), theirs.pop(key)
        assert (sorted(mine) if isinstance(mine, list) else mine) == (
            sorted(reference) if isinstance(reference, list) else reference
        )
    assert ours == theirs


@pytest.mark.parametrize("is_trainable", [False, True])
def test_is_trainable_matches_peft(saved, is_trainable):
    theirs = peft.PeftModel.from_pretrained(
        fresh(saved["base"]), saved["peft_dir"], is_trainable=is_trainable
    )
    ours = peftkit.PeftModel.from_pretrained(
        fresh(saved["base"]), saved["peft_dir"], is_trainable=is_trainable
    )
    trainable = sorted(n for n, p in ours.named_parameters() if p.requires_grad)
    assert trainable == sorted(n for n, p in theirs.named_parameters() if p.requires_grad)
    assert bool(trainable) == is_trainable
    assert ours.training == theirs.training


@pytest.mark.parametrize("low_cpu_mem_usage", [True])
def test_low_cpu_mem_usage_load(saved, low_cpu_mem_usage):
    reference = outputs(saved["theirs"], saved["inputs"])
    loaded = peftkit.PeftModel.from_pretrained(
        fresh(saved["base"]), saved["peft_dir"], low_cpu_mem_usage=low_cpu_mem_usage
    )
    assert not [n for n, p in loaded.named_parameters() if p.is_meta]
    assert max_diff(outputs(loaded, saved["inputs"]), reference) <= ATOL
