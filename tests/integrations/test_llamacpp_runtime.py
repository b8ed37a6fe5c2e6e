"""Exported adapters run by the real llama.cpp (llama-cpp-python, `lora_path=`).

Marked `llamacpp`: it needs `pip install 'peftkit[llamacpp]'`, which compiles llama.cpp (10+ minutes), so
the default run leaves it out and checks the same files against llama.cpp's forward written in torch
(test_gguf_export.py). Run it with `pytest -m llamacpp`; without llama-cpp-python it fails, it never skips.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import perturb_adapter_weights
from tests.integrations.gguf_llama import IDS, peft_logits, tiny_llama_for_gguf, write_llama_gguf

from peftkit import LoraConfig, PeftModel, get_peft_model
from peftkit.integrations.gguf import export_lora_to_gguf

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]

# max |logit difference| allowed, llama.cpp (CPU, fp32 KV cache) against peftkit, on logits of size ~3;
# measured 2026-12-05: base 1.4e-6; with the adapter stored as f32 1.6e-6, f16 8.9e-4, q8_0 1.6e-2
TINY_ATOL = {"f32": 1e-4, "f16": 5e-3, "q8_0": 5e-2}


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        pytest.fail("the llama.cpp runtime is not installed: pip install 'peftkit[llamacpp]'")
    return llama_cpp


def _llama_logits(model_path, lora_path, ids):
    llama = _llama_cpp().Llama(
        model_path=str(model_path),
        lora_path=None if lora_path is None else str(lora_path),
        n_ctx=64,
        n_threads=2,
        logits_all=True,
        type_k=0,  # GGML_TYPE_F32: keys and values cached in fp32 (llama.cpp's default, f16, rounds them)
        type_v=0,
        verbose=False,
    )
    llama.eval(ids)
    return torch.tensor(llama.scores[: len(ids)]).float()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llamacpp")
    model = tiny_llama_for_gguf()
    write_llama_gguf(model, folder / "base.gguf")
    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    )
    perturb_adapter_weights(peft_model, scale=0.05)
    peft_model.save_pretrained(folder / "adapter")
    return model, peft_model, folder


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_llama_cpp_gives_peftkits_logits_on_a_tiny_llama(tiny, dtype):
    model, peft_model, folder = tiny
    lora = export_lora_to_gguf(
        folder / "adapter", folder / f"{dtype}.gguf", base=folder / "base.gguf", dtype=dtype
    )
    base_diff = (_llama_logits(folder / "base.gguf", None, IDS) - peft_logits(model)).abs().max().item()
    lora_diff = (
        (_llama_logits(folder / "base.gguf", lora.path, IDS) - peft_logits(peft_model)).abs().max().item()
    )
    effect = (peft_logits(peft_model) - peft_logits(model)).abs().max().item()
    print(
        f"\n{dtype}: max |logit difference| base {base_diff:.2e}, with adapter {lora_diff:.2e} (adapter effect {effect:.2f})"
    )
    assert base_diff < TINY_ATOL["f32"]
    assert (
        lora_diff < TINY_ATOL[dtype] and effect > 20 * TINY_ATOL[dtype]
    )  # the adapter changes them far more


def test_the_demo_adapter_answers_as_peftkit_on_the_demos_gguf_base(tmp_path):
    """`peftkit demo`'s adapter, exported, on the embedded Q4_1 model in llama.cpp: greedy answers to the 24
    held-out questions, compared with peftkit's (the same prompt token ids)."""
    from peftkit.cli.data import encode_rows, prompt_ids, read_jsonl, reference_answer
    from peftkit.cli.demo import EVAL_FILE, TRAIN_FILE, data_file
    from peftkit.cli.embedded import EMBEDDED_NAME
    from peftkit.cli.generation import generate_answers
    from peftkit.cli.models import load_model, load_tokenizer, resolve_model
    from peftkit.cli.scoring import match_score
    from peftkit.cli.training import TrainSettings, train_adapter

    llama_cpp = _llama_cpp()
    source = resolve_model(EMBEDDED_NAME)
    tokenizer = load_tokenizer(source)
    base = load_model(source)
    pristine = copy.deepcopy(base)
    torch.manual_seed(0)
    model = get_peft_model(
        base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    settings = TrainSettings(epochs=2, learning_rate=3e-3, batch_size=8, warmup_steps=2, show_progress=False)
    train_set = encode_rows(read_jsonl(data_file(TRAIN_FILE)), tokenizer, 256, "training")
    train_adapter(model, train_set, [], tokenizer.pad_token_id, settings, tmp_path)
    model.save_pretrained(tmp_path / "adapter")
    export_lora_to_gguf(tmp_path / "adapter", tmp_path / "adapter.gguf")  # the base: the GGUF file it records

    rows = read_jsonl(data_file(EVAL_FILE))
    prompts = [prompt_ids(r, tokenizer) for r in rows]
    references = [reference_answer(r) for r in rows]
    ours = generate_answers(PeftModel.from_pretrained(pristine, tmp_path / "adapter"), tokenizer, prompts, 16)
    llama = llama_cpp.Llama(
        model_path=source.base_model_name,
        lora_path=str(tmp_path / "adapter.gguf"),
        n_ctx=512,
        n_threads=2,
        verbose=False,
    )
    theirs = []
    for prompt in prompts:
        out = []
        for token in llama.generate(prompt, top_k=1, temp=0.0, reset=True):
            if token == tokenizer.eos_token_id or len(out) == 16:
                break
            out.append(token)
        theirs.append(tokenizer.decode(out, skip_special_tokens=True).strip())
    same = sum(a == b for a, b in zip(ours, theirs))
    print(
        f"\nllama.cpp on the Q4_1 base + exported adapter: {same}/{len(rows)} answers identical to peftkit's; "
        f"score {match_score(theirs, references):.0%} (peftkit {match_score(ours, references):.0%})"
    )
    for a, b in zip(ours, theirs):
        if a != b:
            print(f"  peftkit {a!r} | llama.cpp {b!r}")
    assert match_score(theirs, references) >= 0.8
    assert same >= 20
