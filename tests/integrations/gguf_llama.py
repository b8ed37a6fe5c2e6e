"""A tiny random Llama as a llama.cpp GGUF model, and llama.cpp's Llama forward written out in torch.

`write_llama_gguf` lays the weights out as llama.cpp's converter does (query/key rows interleaved per
head, a byte-level SentencePiece vocabulary so llama.cpp can load the file). `reference_logits` computes
what llama.cpp computes for that file plus a LoRA adapter file: RMSNorm, attention with RoPE on adjacent
pairs (llama.cpp's Llama rotation), SwiGLU, and `W x + (alpha / r) B (A x)` per adapted weight. It checks
our export in CI, where llama-cpp-python (a 10+ minute compile) is not installed.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import torch
from torch.nn import functional as F

from peftkit.integrations.gguf.names import interleave_rows

SPECIALS = ["<unk>", "<s>", "</s>"]
VOCAB_SIZE = len(SPECIALS) + 256  # the specials and one token per byte (llama.cpp looks up <0x0A>)


def tiny_llama_for_gguf(seed: int = 0):
    """A random Llama whose vocabulary is the byte vocabulary below (hidden 64, 4 heads, 2 kv heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.1,
    )
    return LlamaForCausalLM(config).eval()


def _gguf_weights(model) -> dict[str, torch.Tensor]:
    config = model.config
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {
        "token_embd.weight": sd["model.embed_tokens.weight"],
        "output_norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
    }
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(config.num_hidden_layers):
        for hf, kind in names.items():
            weight = sd[f"model.layers.{i}.{hf}.weight"]
            out[f"blk.{i}.{kind}.weight"] = interleave_rows(weight, kind, n_head, n_kv)
    return out


def write_llama_gguf(model, path: Path) -> Path:
    """Write `model` (from `tiny_llama_for_gguf`) as an f32 llama.cpp GGUF model file."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(SPECIALS + [f"<0x{b:02X}>" for b in range(256)])
    writer.add_token_scores([0.0] * VOCAB_SIZE)
    types = gguf.TokenType
    writer.add_token_types([types.UNKNOWN, types.CONTROL, types.CONTROL] + [types.BYTE] * 256)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, tensor in _gguf_weights(model).items():
        writer.add_tensor(name, tensor.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    reader = gguf.GGUFReader(str(path))
    tensors = {
        t.name: torch.tensor(gguf.quants.dequantize(t.data, t.tensor_type)).float() for t in reader.tensors
    }
    fields = {
        k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.") and len(f.types) == 1
    }
    return tensors, fields


def _rope_adjacent_pairs(x: torch.Tensor, base: float) -> torch.Tensor:
    """llama.cpp's Llama RoPE: rotate (x[2i], x[2i+1]) by position * base^(-2i/d). x: (heads, T, d)."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = angles.cos().float(), angles.sin().float()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def reference_logits(base_path: Path, input_ids: list[int], lora_path: Path | None = None) -> torch.Tensor:
    """Logits (T, vocab) that llama.cpp computes for `input_ids` with the base file and a LoRA file."""
    w, meta = _tensors(base_path)
    deltas: dict[str, torch.Tensor] = {}
    if lora_path is not None:
        lora, lora_meta = _tensors(lora_path)
        alpha = lora_meta["adapter.lora.alpha"]
        for name in [n.removesuffix(".lora_a") for n in lora if n.endswith(".lora_a")]:
            a, b = lora[name + ".lora_a"], lora[name + ".lora_b"]
            deltas[name] = (alpha / a.shape[0] if alpha else 1.0) * (b @ a)

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ (w[name] + deltas.get(name, 0.0)).T

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        eps = meta["llama.attention.layer_norm_rms_epsilon"]
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w[name]

    n_head, n_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    base = meta["llama.rope.freq_base"]
    h = w["token_embd.weight"][torch.tensor(input_ids)]
    steps = len(input_ids)
    mask = torch.full((steps, steps), float("-inf")).triu(1)
    for i in range(meta["llama.block_count"]):
        x = norm(h, f"blk.{i}.attn_norm.weight")
        q = linear(x, f"blk.{i}.attn_q.weight").view(steps, n_head, -1).transpose(0, 1)
        k = linear(x, f"blk.{i}.attn_k.weight").view(steps, n_kv, -1).transpose(0, 1)
        v = linear(x, f"blk.{i}.attn_v.weight").view(steps, n_kv, -1).transpose(0, 1)
        q, k = _rope_adjacent_pairs(q, base), _rope_adjacent_pairs(k, base)
        k, v = k.repeat_interleave(n_head // n_kv, 0), v.repeat_interleave(n_head // n_kv, 0)
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]) + mask
        attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(steps, -1)
        h = h + linear(attended, f"blk.{i}.attn_output.weight")
        x = norm(h, f"blk.{i}.ffn_norm.weight")
        gated = F.silu(linear(x, f"blk.{i}.ffn_gate.weight")) * linear(x, f"blk.{i}.ffn_up.weight")
        h = h + linear(gated, f"blk.{i}.ffn_down.weight")
    return linear(norm(h, "output_norm.weight"), "output.weight")


# token ids for the checks: BOS, then the bytes of "Hello, world" (byte tokens start after the specials)
IDS = [1] + [len(SPECIALS) + b for b in b"Hello, world"]


def peft_logits(model, ids: list[int] = IDS) -> torch.Tensor:
    """The (T, vocab) logits of a transformers/peft/peftkit model for one sequence."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()
