"""JSONL reading and encoding: completion-only labels, errors that name the line."""

from __future__ import annotations

import pytest
import torch

from peftkit.cli.data import (
    IGNORE_INDEX,
    collate,
    encode_row,
    encode_rows,
    prompt_ids,
    read_jsonl,
    reference_answer,
    split_rows,
)
from peftkit.cli.errors import CliError

from .conftest import build_tokenizer, write_jsonl


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_prompt_completion_labels_cover_completion_and_eos_only(tokenizer):
    example = encode_row({"prompt": "what color is the sky ?", "completion": "blue"}, tokenizer)
    prompt = tokenizer("what color is the sky ?")["input_ids"]
    assert prompt[0] == tokenizer.bos_token_id  # the tokenizer's special tokens stay on the prompt
    blue = tokenizer.convert_tokens_to_ids("blue")
    assert example.input_ids == [*prompt, blue, tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt) + [blue, tokenizer.eos_token_id]


def test_chat_labels_cover_every_assistant_turn_and_nothing_else(tokenizer):
    row = {
        "messages": [
            {"role": "system", "content": "answer briefly"},
            {"role": "user", "content": "what color is the sky ?"},
            {"role": "assistant", "content": "blue"},
            {"role": "user", "content": "what color is the grass ?"},
            {"role": "assistant", "content": "green"},
        ]
    }
    example = encode_row(row, tokenizer)
    text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
    assert example.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    labelled = [
        tokenizer.convert_ids_to_tokens(i) for i, lab in zip(example.input_ids, example.labels) if lab != -100
    ]
    assert labelled == ["blue", "</s>", "green", "</s>"]  # the replies and their end-of-turn tokens
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(example.input_ids, example.labels))


def test_prompt_ids_are_the_unlabelled_prefix_used_in_training(tokenizer):
    for row in (
        {"prompt": "what color is the sun ?", "completion": "yellow"},
        {
            "messages": [
                {"role": "user", "content": "what color is the sun ?"},
                {"role": "assistant", "content": "yellow"},
            ]
        },
    ):
        example = encode_row(row, tokenizer)
        first_label = next(i for i, lab in enumerate(example.labels) if lab != IGNORE_INDEX)
        assert prompt_ids(row, tokenizer) == example.input_ids[:first_label]
        assert reference_answer(row) == "yellow"


def test_max_length_cuts_rows_and_refuses_rows_left_without_completion(tokenizer):
    row = {"prompt": "what color is the sky ?", "completion": "blue"}
    assert len(encode_row(row, tokenizer, max_length=7).input_ids) == 7
    with pytest.raises(CliError, match=r"row 1\b.*--max-length 3"):
        encode_rows([row], tokenizer, 3, "training")


def test_collate_pads_right_and_masks_padding(tokenizer):
    rows = [
        {"prompt": "what color is the sky ?", "completion": "blue"},
        {"prompt": "the sea ?", "completion": "blue"},
    ]
    batch = collate([encode_row(r, tokenizer) for r in rows], pad_id=tokenizer.pad_token_id)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths == [9, 6]  # BOS + words + completion + EOS
    assert torch.all(batch["input_ids"][1, 6:] == tokenizer.pad_token_id)
    assert torch.all(batch["labels"][1, 6:] == IGNORE_INDEX)


def test_read_jsonl_accepts_both_formats_and_blank_lines(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, "", {"prompt": "c", "completion": "d"}]
    )
    assert len(read_jsonl(path)) == 2


@pytest.mark.parametrize(
    "bad_row, message",
    [
        (
            {"question": "a", "answer": "b"},
            r"line 2: expected the fields 'prompt' and 'completion'.*\['answer', 'question'\]",
        ),
        ({"prompt": "a", "completion": 3}, r"line 2: expected the fields 'prompt' and 'completion'"),
        ("{not json", r"line 2: not valid JSON"),
        ("[1, 2]", r"line 2: expected a JSON object, got list"),
        ({"messages": []}, r"line 2: 'messages' must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, r"line 2: messages\[0\] has role 'robot'"),
        ({"messages": [{"role": "user", "content": "x"}]}, r"line 2: no 'assistant' message"),
        (
            {"messages": [{"role": "user"}]},
            r"line 2: messages\[0\] must be an object with a string 'content'",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            r"line 2: the file mixes",
        ),
    ],
)
def test_read_jsonl_errors_name_the_line(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, bad_row])
    with pytest.raises(CliError, match=message):
        read_jsonl(path)


def test_read_jsonl_missing_and_empty_files(tmp_path):
    with pytest.raises(CliError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CliError, match="holds no rows"):
        read_jsonl(tmp_path / "empty.jsonl")


def test_chat_rows_need_a_chat_template(tokenizer):
    plain = build_tokenizer()
    plain.chat_template = None
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(CliError, match="no chat template"):
        encode_row(row, plain)


def test_split_rows_is_seeded_and_disjoint():
    rows = list(range(20))
    train, held = split_rows(rows, 0.25, seed=3)
    assert len(held) == 5 and sorted(train + held) == rows
    assert split_rows(rows, 0.25, seed=3) == (train, held)
    with pytest.raises(CliError, match="--eval-fraction must be between 0 and 1"):
        split_rows(rows, 1.5, seed=0)
