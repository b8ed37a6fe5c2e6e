"""Batched greedy generation from token-id prompts (left-padded, as decoder-only models need)."""

from __future__ import annotations

from typing import Any


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    sample: dict[str, float] | None = None,
) -> list[str]:
    """Generate one answer per prompt and return the decoded new text (special tokens dropped, stripped).

    Args:
        model: a causal LM or a PeftModel around one.
        tokenizer: its tokenizer (gives the padding and end-of-sequence ids).
        prompts: the prompts as token ids.
        max_new_tokens: the most tokens generated per answer.
        batch_size: prompts generated together.
        sample: None for greedy decoding (reproducible), else sampling settings such as
            {"temperature": 0.7, "top_p": 0.9}.
    """
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    settings: dict[str, Any] = {"do_sample": False} if sample is None else {"do_sample": True, **sample}
    answers: list[str] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(chunk):  # left padding: every prompt ends where generation starts
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                **settings,
            )
        answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, width:]]
    return answers
