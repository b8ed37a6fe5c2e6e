"""AdaptedAttention: an attention module plus a gated attention over trained adaption prompts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._quantized import weight_shape


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


@dataclass(frozen=True)
class AttentionSpec:
    """Where an architecture keeps what adaption prompts need: the attention modules' name, and how to
    get the queries, the prompt's keys and values, and the output projection from such a module."""

    target_modules: str
    fused_qkv: bool  # GPT-2's c_attn computes queries, keys and values in one projection
    rotary: bool
    output_projection: bool  # PEFT adds GPT-2's prompt attention without passing it through c_proj


SPECS = {
    "llama": AttentionSpec("self_attn", fused_qkv=False, rotary=True, output_projection=True),
    "mistral": AttentionSpec("self_attn", fused_qkv=False, rotary=True, output_projection=True),
    "gpt2": AttentionSpec("attn", fused_qkv=True, rotary=False, output_projection=False),
}


class AdaptedAttention(nn.Module):
    """`out = attn(x) + o_proj(gate * softmax(q K_p^T / sqrt(d)) V_p)`: `attn` the wrapped module (kept as
    `model`), `q` its queries for `x` (rotary positions applied where the model uses them), and `K_p`,
    `V_p` the key and value projections of `adaption_prompt` (1, adapter_len, hidden_size), repeated over
    grouped-query heads. (GPT-2: no `o_proj` on the prompt attention, as PEFT computes it.) `adaption_gate` starts at zero, so a new adapter leaves the model unchanged."""

    def __init__(self, model_type: str, adapter_len: int, model: nn.Module) -> None:
        super().__init__()
        self.model_type = model_type
        self.spec = SPECS[model_type]
        self.model = model
        self.adapter_len = adapter_len
        query = self.model.c_attn if self.spec.fused_qkv else self.model.q_proj
        shape, device = weight_shape(query), query.weight.device  # as numbers: a 4-bit weight is packed
        hidden = shape[1] if not self.spec.fused_qkv else shape[0]
        # over an integer (bitsandbytes-packed) query weight the prompt trains in fp32, as in PEFT
        dtype = query.weight.dtype if query.weight.is_floating_point() else torch.float32
        self.adaption_prompt = nn.Parameter(
            torch.empty(1, adapter_len, hidden, device=device, dtype=dtype).normal_()
        )
        self.adaption_gate = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def _head_dim(self) -> int:
        attn = self.model
        return getattr(attn, "head_dim", None) or attn.config.hidden_size // attn.config.num_attention_heads

    def _prompt_keys_values(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        attn, head_dim = self.model, self._head_dim()
        if self.spec.fused_qkv:
            hidden = self.adaption_prompt.shape[-1]
            _, key, value = attn.c_attn(self.adaption_prompt).split(hidden, dim=2)
            out_proj = attn.c_proj if self.spec.output_projection else nn.Identity()
        else:
            key, value, out_proj = (
                attn.k_proj(self.adaption_prompt),
                attn.v_proj(self.adaption_prompt),
                attn.o_proj,
            )
        shape = (1, self.adapter_len, -1, head_dim)
        key = key.view(shape).repeat(batch, 1, 1, 1).transpose(1, 2)
        value = value.view(shape).repeat(batch, 1, 1, 1).transpose(1, 2)
        return key, value, out_proj

    def _queries(self, hidden_states: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        attn, head_dim = self.model, self._head_dim()
        batch, length, hidden = hidden_states.shape
        if self.spec.fused_qkv:
            query = attn.c_attn(hidden_states).split(hidden, dim=2)[0]
        else:
            query = attn.q_proj(hidden_states)
        query = query.view(batch, length, -1, head_dim).transpose(1, 2)
        if self.spec.rotary:
            cos, sin = kwargs["position_embeddings"]
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            query = query * cos + _rotate_half(query) * sin
        return query

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("output_attentions"):
            raise NotImplementedError("output_attentions is not supported for adaption prompts.")
        output, *rest = self.model(*args, **kwargs)
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        batch = output.shape[0]
        query = self._queries(hidden_states, kwargs)
        key, value, out_proj = self._prompt_keys_values(batch)
        groups = query.shape[1] // key.shape[1]
        if groups > 1:  # grouped-query attention: each prompt key/value head serves `groups` query heads
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        dtype = query.dtype
        scores = torch.matmul(query, key.transpose(2, 3).to(dtype)) / math.sqrt(query.shape[-1])
        scores = self.adaption_gate * nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        adapter_output = (
            torch.matmul(scores, value.to(dtype)).transpose(1, 2).reshape(batch, output.shape[1], -1)
        )
        output = (output + out_proj(adapter_output)).to(dtype)
        return output, *rest
