"""Shared helpers of the prompt-learning tests: the same adapter built by peft and by peftkit."""

from __future__ import annotations

import copy
import warnings

import torch
from tests.oracle import portable_init_

ATOL = 1e-5  # the brief's tolerance for prompt-learning logits (fp32)

TASK_OUTPUT = {
    "CAUSAL_LM": "logits",
    "SEQ_2_SEQ_LM": "logits",
    "SEQ_CLS": "logits",
    "TOKEN_CLS": "logits",
    "QUESTION_ANS": "start_logits",
    "FEATURE_EXTRACTION": "last_hidden_state",
}


def config_pair(name: str, **kwargs):
    """The config class `name` from peft and from peftkit, built with the same arguments."""
    import peft

    import peftkit

    return getattr(peft, name)(**kwargs), getattr(peftkit, name)(**kwargs)


def make_prompt_pair(model_fn, config_name: str, seed: int = 0, **config_kwargs):
    """The same base model wrapped by peft and by peftkit; peft's adapter (redrawn from `seed`) copied into
    ours with a strict load_state_dict, so the module trees must agree key for key. Every weight is drawn
    by `portable_init_`, so recorded peft answers hold on every transformers version."""
    import peft

    import peftkit

    base = portable_init_(model_fn(), seed=1000)
    theirs_cfg, ours_cfg = config_pair(config_name, **config_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), theirs_cfg)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_cfg)
    portable_init_(theirs, seed=seed, only_trainable=True)
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return base, theirs.eval(), ours.eval()


def output_of(out, task_type: str) -> torch.Tensor:
    return getattr(out, TASK_OUTPUT[task_type])


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"max abs difference {diff} > {atol}"
