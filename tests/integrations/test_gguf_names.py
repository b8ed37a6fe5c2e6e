"""llama.cpp's names for adapted weights, and its query/key row order for Llama."""

from __future__ import annotations

import gguf
import pytest
import torch

from peftkit.integrations.gguf.names import (
    ARCHITECTURES,
    NO_OUTPUT_TENSOR,
    deinterleave_rows,
    gguf_tensor_name,
    interleave_rows,
    module_name,
    supported_modules,
)

MODULES = [f"model.layers.3.{m}" for m in supported_modules() if m != "lm_head"] + ["lm_head"]


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_names_agree_with_the_gguf_packages_name_map(model_type):
    arch_name, _ = ARCHITECTURES[model_type]
    arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}[arch_name]
    name_map = gguf.get_tensor_name_map(arch, 8)
    has_output = gguf.MODEL_TENSOR.OUTPUT in gguf.MODEL_TENSORS[arch]
    assert has_output == (arch_name not in NO_OUTPUT_TENSOR)
    for module in MODULES if has_output else MODULES[:-1]:
        ours = gguf_tensor_name(module)
        assert ours is not None
        assert name_map.get_name(module + ".weight", try_suffixes=(".weight",)) == ours.gguf, module
        assert module_name(ours.gguf) == module  # and back


def test_modules_without_a_llama_cpp_tensor():
    for module in (
        "model.embed_tokens",
        "model.layers.0.self_attn.rotary",
        "score",
        "model.layers.x.mlp.up_proj",
    ):
        assert gguf_tensor_name(module) is None
    for tensor in ("token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.bias", "output"):
        assert module_name(tensor) is None
    assert gguf_tensor_name("model.layers.12.mlp.down_proj").layer == 12
    assert gguf_tensor_name("lm_head").layer is None


def test_interleaving_puts_each_heads_halves_side_by_side():
    n_head, n_head_kv, head_dim = 4, 2, 6
    for kind, heads in (("attn_q", n_head), ("attn_k", n_head_kv)):
        rows = torch.arange(heads * head_dim, dtype=torch.float32)[:, None].repeat(1, 3)  # row i holds i
        moved = interleave_rows(rows, kind, n_head, n_head_kv)[:, 0].long().tolist()
        half = head_dim // 2
        expected = [h * head_dim + j * half + i for h in range(heads) for i in range(half) for j in range(2)]
        assert moved == expected
        assert torch.equal(
            deinterleave_rows(interleave_rows(rows, kind, n_head, n_head_kv), kind, n_head, n_head_kv), rows
        )
    other = torch.randn(8, 3)
    assert interleave_rows(other, "attn_v", n_head, n_head_kv) is other  # only queries and keys move


def test_interleaved_rows_with_adjacent_pair_rope_equal_rotate_half_rope():
    """Why llama.cpp needs the permutation: its Llama rotates adjacent pairs, transformers rotates halves."""
    from transformers.models.llama.modeling_llama import rotate_half

    heads, head_dim, steps, base = 2, 8, 5, 10000.0
    x = torch.randn(heads, steps, head_dim, dtype=torch.float64)  # one projection's output, per head
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(steps, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    rotated_halves = x * cos + rotate_half(x) * sin  # transformers
    # the same vectors with rows interleaved, rotated as llama.cpp does
    flat = x.permute(1, 0, 2).reshape(steps, heads * head_dim).T  # (rows, steps)
    moved = interleave_rows(flat, "attn_q", heads, heads).T.reshape(steps, heads, head_dim).permute(1, 0, 2)
    even, odd = moved[..., 0::2], moved[..., 1::2]
    pairs = torch.stack(
        (even * angles.cos() - odd * angles.sin(), even * angles.sin() + odd * angles.cos()), -1
    )
    back = pairs.flatten(-2).permute(1, 0, 2).reshape(steps, heads * head_dim).T
    restored = (
        deinterleave_rows(back, "attn_q", heads, heads).T.reshape(steps, heads, head_dim).permute(1, 0, 2)
    )
    assert torch.allclose(restored, rotated_halves, atol=1e-12)


def test_head_counts_that_do_not_fit_are_an_error():
    with pytest.raises(ValueError, match="attn_q projection has 12 output rows.*right base model"):
        interleave_rows(torch.zeros(12, 2), "attn_q", 5, 5)
