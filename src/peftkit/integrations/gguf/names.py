"""How llama.cpp names and lays out the weights that a LoRA adapter changes.

A PEFT adapter names the transformers module it adapts (`model.layers.3.self_attn.q_proj`); llama.cpp
names the GGUF tensor of the same weight (`blk.3.attn_q.weight`) and finds an adapter's factors as
`<tensor>.lora_a` / `<tensor>.lora_b`. The architectures below share transformers' Llama module names,
so one table serves them all; `tests/integrations/test_gguf_names.py` checks it against the name map of
the `gguf` package.

Llama's GGUF conversion also reorders the output rows of the query and key projections: transformers
rotates the two halves of each attention head (rotate-half RoPE) while llama.cpp's Llama rotates
adjacent pairs, so each head's rows `[h0 | h1]` are interleaved as `h0[0], h1[0], h0[1], h1[1], ...`.
A LoRA delta `B @ A` on those weights needs the same reordering of B's rows (A is untouched).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import GGUFConversionError

# transformers `model_type` -> (GGUF architecture, whether q/k rows are interleaved for llama.cpp)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "llama": ("llama", True),
    "mistral": ("llama", True),  # llama.cpp converts Mistral to its Llama architecture
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
    "gemma": ("gemma", False),
    "gemma2": ("gemma2", False),
}
GGUF_ARCHITECTURES = sorted({arch for arch, _ in ARCHITECTURES.values()})
# GGUF architectures whose query/key rows are interleaved (the Llama family)
INTERLEAVED_QK = {arch for arch, interleaved in ARCHITECTURES.values() if interleaved}
# GGUF architectures that always use the token embedding as the output head (no `output.weight`)
NO_OUTPUT_TENSOR = {"gemma", "gemma2"}

# module inside a decoder layer -> GGUF tensor inside block N
_LAYER_MODULES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GGUF_LAYER_TENSORS = {v: k for k, v in _LAYER_MODULES.items()}
_TOP_MODULES = {"lm_head": "output"}
_GGUF_TOP_TENSORS = {v: k for k, v in _TOP_MODULES.items()}
_LAYER_MODULE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)\.weight$")

LORA_A_SUFFIX = ".lora_a"
LORA_B_SUFFIX = ".lora_b"


@dataclass(frozen=True)
class TensorName:
    """Where one adapted weight lives in llama.cpp: its GGUF tensor name and what it is."""

    gguf: str  # e.g. "blk.3.attn_q.weight"
    layer: int | None  # the block number; None for tensors outside the blocks (the output head)
    kind: str  # the GGUF tensor kind, e.g. "attn_q", "output"


def supported_modules() -> list[str]:
    """The module names (inside `model.layers.N.` or at the top) that can be exported, for messages."""
    return [*_LAYER_MODULES, *_TOP_MODULES]


def gguf_tensor_name(module: str) -> TensorName | None:
    """The GGUF tensor of the weight of transformers module `module`, or None when llama.cpp has none."""
    if module in _TOP_MODULES:
        kind = _TOP_MODULES[module]
        return TensorName(f"{kind}.weight", None, kind)
    match = _LAYER_MODULE.match(module)
    if match is None or match.group(2) not in _LAYER_MODULES:
        return None
    layer, kind = int(match.group(1)), _LAYER_MODULES[match.group(2)]
    return TensorName(f"blk.{layer}.{kind}.weight", layer, kind)


def module_name(gguf_tensor: str) -> str | None:
    """The transformers module whose weight GGUF tensor `gguf_tensor` is (the inverse of the above)."""
    top = gguf_tensor.removesuffix(".weight")
    if top in _GGUF_TOP_TENSORS and gguf_tensor.endswith(".weight"):
        return _GGUF_TOP_TENSORS[top]
    match = _BLOCK_TENSOR.match(gguf_tensor)
    if match is None or match.group(2) not in _GGUF_LAYER_TENSORS:
        return None
    return f"model.layers.{int(match.group(1))}.{_GGUF_LAYER_TENSORS[match.group(2)]}"


def _heads(kind: str, n_head: int, n_head_kv: int) -> int | None:
    return {"attn_q": n_head, "attn_k": n_head_kv}.get(kind)


def interleave_rows(lora_b: torch.Tensor, kind: str, n_head: int, n_head_kv: int) -> torch.Tensor:
    """B's rows in llama.cpp's Llama order (for attn_q/attn_k; other kinds are returned as they are).

    Each of the projection's heads holds two halves of `head_dim / 2` rows; llama.cpp wants them
    interleaved (row 2i from the first half, row 2i+1 from the second).
    """
    heads = _heads(kind, n_head, n_head_kv)
    if heads is None:
        return lora_b
    rows = lora_b.shape[0]
    _check_divisible(rows, heads, kind)
    halves = lora_b.reshape(heads, 2, rows // heads // 2, *lora_b.shape[1:])
    return halves.transpose(1, 2).reshape(lora_b.shape).contiguous()


def deinterleave_rows(lora_b: torch.Tensor, kind: str, n_head: int, n_head_kv: int) -> torch.Tensor:
    """The inverse of `interleave_rows`: B's rows back in transformers' order."""
    heads = _heads(kind, n_head, n_head_kv)
    if heads is None:
        return lora_b
    rows = lora_b.shape[0]
    _check_divisible(rows, heads, kind)
    pairs = lora_b.reshape(heads, rows // heads // 2, 2, *lora_b.shape[1:])
    return pairs.transpose(1, 2).reshape(lora_b.shape).contiguous()


def _check_divisible(rows: int, heads: int, kind: str) -> None:
    if heads <= 0 or rows % (2 * heads):
        raise GGUFConversionError(
            f"The {kind} projection has {rows} output rows, which {heads} attention heads of even size cannot "
            "split: the base model's head counts do not fit this adapter (is it the right base model?)."
        )
