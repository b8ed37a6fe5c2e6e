"""Shared fixtures: tiny models built from configs (no download) and peft-vs-peftkit pairs.

`peft` is the oracle: tests build the same adapter in both libraries on the same base weights, copy
peft's adapter weights into ours, and compare outputs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import warnings

import pytest
import torch
from torch import nn

warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` (CI) runs one worker per core: a torch thread pool per worker would oversubscribe
    # the cores, and the tests' tiny models gain nothing from intra-op threads anyway
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _same_random_draws_in_any_order():
    """Every test starts from torch's seed 0, so what it draws does not depend on which tests ran before
    it in the same process (`pytest -n` hands tests to workers in no fixed order)."""
    random.seed(0)
    torch.manual_seed(0)


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    values = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        pad_token_id=0,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


def tiny_llama_seq_cls(seed: int = 0, num_labels: int = 3, **overrides):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    return LlamaForSequenceClassification(tiny_llama_config(num_labels=num_labels, **overrides)).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64, bos_token_id=1, eos_token_id=2
    )
    return GPT2LMHeadModel(config).eval()


def tiny_bert(seed: int = 0, task: str = "seq_cls"):
    from transformers import (
        BertConfig,
        BertForQuestionAnswering,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertModel,
    )

    torch.manual_seed(seed)
    num_labels = 2 if task == "qa" else 3  # QA heads predict (start, end)
    config = BertConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=128,
        num_labels=num_labels,
    )
    cls = {
        "seq_cls": BertForSequenceClassification,
        "token_cls": BertForTokenClassification,
        "qa": BertForQuestionAnswering,
        "feature": BertModel,
    }[task]
    return cls(config).eval()


def tiny_t5(seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, vocab_size=128, decoder_start_token_id=0
    )
    return T5ForConditionalGeneration(config).eval()


class ConvNet(nn.Module):
    """A small model with every layer kind LoRA supports besides Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1)
        self.conv2d = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2d_1x1 = nn.Conv2d(4, 4, 1)
        self.conv3d = nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1))
        self.lin = nn.Linear(8, 8)
        self.out = nn.Linear(8 * 8 + 4 * 8 * 8 + 2 * 8 * 8, 5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.lin(self.emb(input_ids))  # (B, 8, 8): 8 tokens
        a = self.conv1d(h.transpose(1, 2)).flatten(1)  # (B, 64)
        img = h.unsqueeze(1)  # (B, 1, 8, 8)
        b = self.conv2d_1x1(self.conv2d(img)).flatten(1)  # (B, 256)
        c = self.conv3d(img.unsqueeze(1)).flatten(1)  # (B, 128)
        return self.out(torch.cat([a, b, c], dim=1))


def conv_net(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet().eval()


def llama_inputs(batch: int = 2, length: int = 7, seed: int = 1, vocab: int = 128) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab, (batch, length), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0  # left padding in the first row
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def perturb_adapter_weights(model: nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Move every trainable tensor away from its (often zero) initial value, deterministically."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * scale)


def make_pair(model_fn, config_kwargs: dict, task_type: str | None = None, seed: int = 0):
    """The same base model wrapped by peft and by peftkit, with peft's (perturbed) adapter copied into ours."""
    import peft

    import peftkit

    base = model_fn()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(task_type=task_type, **config_kwargs))
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(task_type=task_type, **config_kwargs)
    )
    perturb_adapter_weights(theirs, seed=seed)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    return base, theirs.eval(), ours.eval()


def trainable_names(model: nn.Module) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


@pytest.fixture
def tmp_adapter_dir(tmp_path):
    return tmp_path / "adapter"


@pytest.fixture
def peft_oracle(request):
    """peft's answer, live where peft works on the installed transformers and recorded where it does not
    (see tests/oracle.py): `peft_oracle(lambda: theirs(**inputs).logits, theirs, inputs)`."""
    from tests.oracle import oracle_for

    return oracle_for(request.node.path, request.node.name)


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op thread count set to `count` inside the block, restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def require_native_kernels(kernels=None) -> None:
    """peftkit's native kernels (the module `kernels` loads: the dropout kernels by default) must be built
    here, where they can be (Linux x86-64 with AVX2 and a C compiler: CI's machines): a failed build fails
    the test; elsewhere the test is skipped, saying why."""
    import shutil

    from peftkit.tuners import _masked_lowrank
    from peftkit.utils import cpu_kernels

    kernels = kernels or _masked_lowrank
    if kernels.available():
        return
    if not cpu_kernels.platform_problem() and (os.environ.get("CC") or shutil.which("cc")):
        pytest.fail(f"the native kernels should build here: {kernels.unavailable_reason()}")
    pytest.skip(f"no native kernels on this machine: {kernels.unavailable_reason()}")


@pytest.fixture(params=["kernels", "positions"])
def dropout_engine(request, monkeypatch):
    """Runs a test with adapter dropout drawn in the native kernels, then as positions (torch ops)."""
    from peftkit.tuners import _masked_lowrank

    if request.param == "kernels":
        require_native_kernels()
    else:
        monkeypatch.setattr(_masked_lowrank, "applies", lambda x: False)
    return request.param
