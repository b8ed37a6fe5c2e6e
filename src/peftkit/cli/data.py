"""JSONL datasets: reading and checking rows, and turning them into token ids with completion-only labels.

Two row formats are accepted (one per line, formats may not be mixed within a file):
- `{"prompt": str, "completion": str}`: the prompt is encoded as plain text (with the tokenizer's special
  tokens, e.g. BOS), the completion is appended and ends with the end-of-sequence token.
- `{"messages": [{"role": ..., "content": ...}, ...]}`: a chat rendered with the tokenizer's chat template.

Only completion tokens (resp. assistant turns) carry labels; every other position is -100, so the loss
is computed on what the model should produce, not on the prompt it was given.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CliError

IGNORE_INDEX = -100  # positions with this label add nothing to the loss
_ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Example:
    """One encoded row."""

    input_ids: list[int]
    labels: list[int]


def _row_kind(row: Any, where: str) -> str:
    """'prompt' or 'messages', after checking the row's fields; raises CliError naming `where`."""
    if not isinstance(row, dict):
        raise CliError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise CliError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects.")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise CliError(f"{where}: messages[{i}] must be an object with a string 'content'.")
            if message.get("role") not in _ROLES:
                raise CliError(
                    f"{where}: messages[{i}] has role {message.get('role')!r}; expected one of {', '.join(_ROLES)}."
                )
        if not any(m["role"] == "assistant" for m in messages):
            raise CliError(f"{where}: no 'assistant' message, so there is nothing to learn (or to compare).")
        return "messages"
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return "prompt"
    raise CliError(
        f"{where}: expected the fields 'prompt' and 'completion' (strings) or 'messages' (a list of "
        f"{{'role', 'content'}}); the row has {sorted(row) or 'no fields'}."
    )


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a JSONL dataset; errors name the file and the 1-based line number."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"The dataset file '{path}' does not exist.")
    rows: list[dict[str, Any]] = []
    kinds: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are allowed
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CliError(f"{where}: not valid JSON ({err.msg}).") from err
            kinds.add(_row_kind(row, where))
            if len(kinds) > 1:
                raise CliError(
                    f"{where}: the file mixes prompt/completion rows and messages rows; use one format."
                )
            rows.append(row)
    if not rows:
        raise CliError(f"The dataset file '{path}' holds no rows.")
    return rows


def _chat(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise CliError(
            "The dataset has 'messages' rows but the tokenizer has no chat template; use "
            "'prompt'/'completion' rows for this model."
        )


def _encode_messages(row: dict[str, Any], tokenizer: Any) -> Example:
    """Render the chat piece by piece so each assistant turn's tokens are known exactly.

    Each piece is the text the template adds between two renderings of growing prefixes of the chat; the
    pieces that hold an assistant reply (up to and including its end-of-turn token) are labelled.
    """
    _require_chat_template(tokenizer)
    messages = row["messages"]
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = _chat(tokenizer, messages[:i], generation_prompt=True)
            ids_piece, rendered = _piece(tokenizer, rendered, prompt)
            ids += ids_piece
            labels += [IGNORE_INDEX] * len(ids_piece)
            full = _chat(tokenizer, messages[: i + 1], generation_prompt=False)
            ids_piece, rendered = _piece(tokenizer, rendered, full)
            ids += ids_piece
            labels += ids_piece
    return Example(ids, labels)


def _piece(tokenizer: Any, rendered: str, longer: str) -> tuple[list[int], str]:
    if not longer.startswith(rendered):
        raise CliError(
            "The tokenizer's chat template renders a chat differently from its own beginning, so assistant "
            "turns cannot be located; use 'prompt'/'completion' rows."
        )
    text = longer[len(rendered) :]
    return tokenizer(text, add_special_tokens=False)["input_ids"], longer


def _encode_prompt_completion(row: dict[str, Any], tokenizer: Any) -> Example:
    # Encoded separately, so the prompt's tokens are the same as at generation time.
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    completion_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]  # so the model learns to stop
    return Example(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids)


def encode_row(row: dict[str, Any], tokenizer: Any, max_length: int | None = None) -> Example:
    """Token ids and labels for one checked row, cut to `max_length` tokens."""
    example = (
        _encode_messages(row, tokenizer) if "messages" in row else _encode_prompt_completion(row, tokenizer)
    )
    if max_length is not None:
        example = Example(example.input_ids[:max_length], example.labels[:max_length])
    return example


def encode_rows(
    rows: list[dict[str, Any]], tokenizer: Any, max_length: int | None, name: str
) -> list[Example]:
    """Encode every row; rows whose completion is cut away entirely by `max_length` are an error."""
    examples = [encode_row(row, tokenizer, max_length) for row in rows]
    empty = [i for i, e in enumerate(examples) if all(label == IGNORE_INDEX for label in e.labels)]
    if empty:
        raise CliError(
            f"{len(empty)} row(s) of the {name} set (first: row {empty[0] + 1}) keep no completion token "
            f"within --max-length {max_length}; raise --max-length or shorten the prompts."
        )
    return examples


def prompt_ids(row: dict[str, Any], tokenizer: Any) -> list[int]:
    """The token ids a model is given to produce the row's (last) answer, encoded as in training."""
    if "messages" not in row:
        return tokenizer(row["prompt"])["input_ids"]
    _require_chat_template(tokenizer)
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return tokenizer(_chat(tokenizer, messages[:last], generation_prompt=True), add_special_tokens=False)[
        "input_ids"
    ]


def user_prompt_row(text: str, tokenizer: Any, chat: bool | None) -> dict[str, Any]:
    """A row for a prompt typed on the command line: a one-message chat when `chat` (default: when the
    tokenizer has a chat template), else plain text."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat:
        return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]}
    return {"prompt": text, "completion": ""}


def reference_answer(row: dict[str, Any]) -> str:
    """The expected answer of a row: its completion, or its last assistant message."""
    if "messages" not in row:
        return row["completion"]
    return [m for m in row["messages"] if m["role"] == "assistant"][-1]["content"]


def split_rows(rows: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Split off a seeded random `fraction` of rows for evaluation: (train, eval)."""
    if not 0.0 < fraction < 1.0:
        raise CliError(f"--eval-fraction must be between 0 and 1 (exclusive), got {fraction}.")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction))
    if n_eval >= len(rows):
        raise CliError(f"--eval-fraction {fraction} leaves no training rows out of {len(rows)}.")
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
