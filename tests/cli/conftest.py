"""Fixtures for the command-line tests: a tiny Llama with a tiny word-level tokenizer, saved to a folder
(built offline from a config and a few strings), small JSONL datasets, and a way to run `peftkit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftkit.cli import main

FACTS = [
    ("what color is the apple ?", "red"),
    ("what color is the sky ?", "blue"),
    ("what color is the grass ?", "green"),
    ("what color is the sun ?", "yellow"),
    ("what color is the snow ?", "white"),
    ("what color is the night ?", "black"),
    ("what color is the sea ?", "blue"),
    ("what color is the leaf ?", "green"),
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tokenizer():
    """A word-level tokenizer with BOS added to plain text, and a chat template whose turns end in EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    words = " ".join(f"{q} {a} the a system user assistant answer briefly" for q, a in FACTS)
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.train_from_iterator([words], trainers.WordLevelTrainer(special_tokens=SPECIALS))
    bos = raw.token_to_id("<s>")
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=False,
        initializer_range=0.3,  # big enough logits that a few LoRA steps can fit the toy data
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A transformers model folder (config, safetensors, tokenizer) of a randomly initialised tiny Llama."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer()
    build_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw strings written as they are) one per line."""
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture
def prompt_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", [{"prompt": q, "completion": a} for q, a in FACTS])


@pytest.fixture
def chat_data(tmp_path) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FACTS
    ]
    return write_jsonl(tmp_path / "chat.jsonl", rows)


@pytest.fixture
def cli(capsys):
    """Run `peftkit ARGS` in-process; returns (exit status, stdout, stderr). argparse exits become statuses."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's own errors and --help
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def trained_adapter(tmp_path, tiny_model_dir, prompt_data, cli) -> Path:
    """An adapter trained for a few steps by `peftkit train` on the tiny model."""
    out = tmp_path / "adapter"
    code, _, err = cli(
        "train", "--model", tiny_model_dir, "--data", prompt_data, "-o", out,
        "--max-steps", 3, "--lr", 1e-2, "--no-progress", "--target-modules", "q_proj", "v_proj", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    return out
