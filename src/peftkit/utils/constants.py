"""File names and per-architecture defaults shared by every method."""

from __future__ import annotations

import torch

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.bin"
SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"

INCLUDE_LINEAR_LAYERS_SHORTHAND = "all-linear"
EMBEDDING_LAYER_NAMES = ["embed_tokens", "lm_head"]
SEQ_CLS_HEAD_NAMES = ["score", "classifier"]

# Default LoRA targets when `target_modules` is None, keyed by `model.config.model_type`.
# These are facts about the architectures (their attention projection names), the same table PEFT uses.
TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING: dict[str, list[str] | str] = {
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "bloom": ["query_key_value"],
    "blip-2": ["q", "v", "q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt_neo": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "deberta": ["in_proj"],
    "layoutlm": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "llama4": ["q_proj", "v_proj"],
    "chatglm": ["query_key_value"],
    "gpt_bigcode": ["c_attn"],
    "mpt": ["Wqkv"],
    "RefinedWebModel": ["query_key_value"],
    "RefinedWeb": ["query_key_value"],
    "falcon": ["query_key_value"],
    "btlm": ["c_proj", "c_attn"],
    "codegen": ["qkv_proj"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "stablelm": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj", "fc1", "fc2"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"],
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)",
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "nemotron_h": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "rwkv": ["key", "value", "receptance", "output"],
    "rwkv7": ["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"],
}


def _with_overrides(mapping: dict, **overrides) -> dict:
    """A copy of `mapping` (its lists copied too) with some architectures' entries replaced."""
    copied = {k: list(v) if isinstance(v, list) else v for k, v in mapping.items()}
    copied.update(overrides)
    return copied


# Default targets of the other weight-delta methods: LoRA's, except where PEFT differs.
TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_RANDLORA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_TINYLORA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_SUPERTUNING_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, phi=["q_proj", "v_proj"]
)
TRANSFORMERS_MODELS_TO_DEFT_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, gpt2=["mlp.c_proj"], gpt_bigcode=["mlp.c_proj"]
)
TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_DELORA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_GRALORA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_MISS_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_SHIRA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, phi=["q_proj", "v_proj"]
)
TRANSFORMERS_MODELS_TO_ROAD_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_UNILORA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
# WaveFT: FourierFT's table without the architectures PEFT added to LoRA's later (btlm, rwkv, rwkv7)
TRANSFORMERS_MODELS_TO_WAVEFT_TARGET_MODULES_MAPPING = {
    model_type: targets
    for model_type, targets in TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING.items()
    if model_type not in ("btlm", "rwkv", "rwkv7")
}
TRANSFORMERS_MODELS_TO_C3A_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, gpt2=["mlp.c_proj"], gpt_bigcode=["mlp.c_proj"]
)
TRANSFORMERS_MODELS_TO_POLY_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)

TRANSFORMERS_MODELS_TO_ADAMSS_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, vit=["query", "value"]
)
TRANSFORMERS_MODELS_TO_HIRA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_GLORA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_PEANUT_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_PSOFT_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)

# OSF: every projection of the attention and MLP blocks (its own table in PEFT); a model type missing
# here gets "all-linear" (OSFModel decides that, as PEFT does).
_OSF_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"]
TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING: dict[str, list[str]] = {
    **{
        name: list(_OSF_LLAMA_LIKE)
        for name in (
            "llama",
            "llama4",
            "mistral",
            "mixtral",
            "gemma",
            "gemma2",
            "gemma3_text",
            "qwen2",
            "qwen3",
            "phi",
        )
    },
    "gpt2": ["c_attn", "c_proj"],
    "bloom": ["query_key_value", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "gpt_neox": ["query_key_value", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense_4h_to_h"],
    "gpt_bigcode": ["c_attn", "c_proj"],
}

# AdaLoRA: its own table (more projections per architecture for some models, fewer architectures).
TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING: dict[str, list[str] | str] = {
    "t5": ["q", "k", "v", "o", "wi", "wo"],
    "mt5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gpt2": ["c_attn"],
    "bloom": ["query_key_value"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt_neo": ["q_proj", "v_proj"],
    "llama": ["q_proj", "v_proj"],
    "llama4": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "gpt_bigcode": ["c_attn"],
    "deberta": ["in_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"],
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)",
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "nemotron_h": ["q_proj", "k_proj", "v_proj", "o_proj"],
}

# VB-LoRA: AdaLoRA's table, except RoBERTa (queries and values only).
TRANSFORMERS_MODELS_TO_VBLORA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING, roberta=["query", "value"]
)

# IA3: the attention keys/values and the MLP output projection; the feed-forward ones scale their input.
TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING: dict[str, list[str]] = {
    "t5": ["k", "v", "wo"],
    "mt5": ["k", "v", "wi_1"],
    "gpt2": ["c_attn", "mlp.c_proj"],
    "bloom": ["query_key_value", "mlp.dense_4h_to_h"],
    "roberta": ["key", "value", "output.dense"],
    "opt": ["q_proj", "k_proj", "fc2"],
    "gptj": ["q_proj", "v_proj", "fc_out"],
    "gpt_neox": ["query_key_value", "dense_4h_to_h"],
    "gpt_neo": ["q_proj", "v_proj", "c_proj"],
    "bart": ["q_proj", "v_proj", "fc2"],
    "gpt_bigcode": ["c_attn", "mlp.c_proj"],
    "llama": ["k_proj", "v_proj", "down_proj"],
    "llama4": ["q_proj", "v_proj", "down_proj"],
    "mistral": ["k_proj", "v_proj", "down_proj"],
    "mixtral": ["k_proj", "v_proj", "w2"],
    "bert": ["key", "value", "output.dense"],
    "deberta-v2": ["key_proj", "value_proj", "output.dense"],
    "deberta": ["in_proj", "output.dense"],
    "RefinedWebModel": ["query_key_value", "dense_4h_to_h"],
    "RefinedWeb": ["query_key_value", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense_4h_to_h"],
    "phi": ["q_proj", "v_proj", "fc2"],
    "gemma": ["q_proj", "v_proj", "down_proj"],
    "gemma2": ["q_proj", "v_proj", "down_proj"],
    "gemma3_text": ["q_proj", "v_proj", "down_proj"],
    "qwen2": ["q_proj", "v_proj", "down_proj"],
    "qwen3": ["q_proj", "v_proj", "down_proj"],
}
TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING: dict[str, list[str]] = {
    "t5": ["wo"],
    "mt5": [],
    "gpt2": ["mlp.c_proj"],
    "bloom": ["mlp.dense_4h_to_h"],
    "roberta": ["output.dense"],
    "opt": ["fc2"],
    "gptj": ["fc_out"],
    "gpt_neox": ["dense_4h_to_h"],
    "gpt_neo": ["c_proj"],
    "bart": ["fc2"],
    "gpt_bigcode": ["mlp.c_proj"],
    "llama": ["down_proj"],
    "llama4": ["down_proj"],
    "mistral": ["down_proj"],
    "mixtral": ["w2"],
    "bert": ["output.dense"],
    "deberta-v2": ["output.dense"],
    "deberta": ["output.dense"],
    "RefinedWeb": ["dense_4h_to_h"],
    "RefinedWebModel": ["dense_4h_to_h"],
    "falcon": ["dense_4h_to_h"],
    "phi": ["fc2"],
    "gemma": ["down_proj"],
    "gemma2": ["down_proj"],
    "gemma3_text": ["down_proj"],
    "qwen2": ["down_proj"],
    "qwen3": ["down_proj"],
}

# LN tuning: the normalisation layers of each architecture (llava also trains its projector and heads).
TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING: dict[str, list[str]] = {
    "llama": ["input_layernorm", "post_attention_layernorm", "norm"],
    "bloom": ["input_layernorm", "post_attention_layernorm", "ln_f"],
    "llava": [
        "multi_modal_projector",
        "input_layernorm",
        "post_attention_layernorm",
        "norm",
        "embed_tokens",
        "lm_head",
    ],
    "t5": ["layer_norm", "final_layer_norm"],
    "mt5": ["layer_norm", "final_layer_norm"],
    "bart": ["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"],
    "gpt2": ["ln_1", "ln_2", "ln_f"],
    "blip-2": ["layernorm", "LayerNorm", "final_layer_norm", "self_attn_layer_norm"],
    "gptj": ["ln_1", "ln_f"],
    "falcon": ["input_layernorm", "post_attention_layernorm", "ln_f"],
    "mistral": ["input_layernorm", "post_attention_layernorm", "norm"],
    "phi": ["input_layernorm", "final_layernorm"],
    "gemma": ["input_layernorm", "post_attention_layernorm", "norm"],
    "gemma2": [
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
        "norm",
    ],
    "gemma3_text": [
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
        "norm",
    ],
    "qwen2": ["post_attention_layernorm"],
    "qwen3": ["post_attention_layernorm"],
}

# BEFT: the attention value projection of each architecture (its own table in PEFT).
TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING: dict[str, list[str]] = {
    "t5": ["v"],
    "mt5": ["v"],
    "roberta": ["value"],
    "opt": ["v_proj"],
    "gptj": ["v_proj"],
    "gpt_neo": ["v_proj"],
    "bart": ["v_proj"],
    "llama": ["v_proj"],
    "llama4": ["v_proj"],
    "mistral": ["v_proj"],
    "mixtral": ["v_proj"],
    "bert": ["value"],
    "deberta-v2": ["value_proj"],
    "phi": ["v_proj"],
    "gemma": ["v_proj"],
    "gemma2": ["v_proj"],
    "gemma3_text": ["v_proj"],
    "qwen2": ["v_proj"],
    "qwen3": ["v_proj"],
}
# FRoD and PVeRA: VeRA's targets plus one vision model each; Lily: LoRA's.
TRANSFORMERS_MODELS_TO_FROD_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING, vit=["query", "value"]
)
TRANSFORMERS_MODELS_TO_LILY_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
)
TRANSFORMERS_MODELS_TO_PVERA_TARGET_MODULES_MAPPING = _with_overrides(
    TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING, dinov2=["query", "value"]
)

# Floating dtypes a LoRA delta may be computed in when it is added to a targeted parameter, and the
# fp8 dtypes (by name: older torch lacks some) that are upcast first because they cannot be added in.
ALLOWED_COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
UPCAST_DTYPES = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")


def bloom_model_postprocess_past_key_value(
    past_key_values: tuple[torch.Tensor, ...],
) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """BLOOM's legacy cache layout from prefix-tuning's (layers, batch, heads, tokens, head_dim) blocks: per
    layer, keys as (batch * heads, head_dim, tokens) and values as (batch * heads, tokens, head_dim)."""
    stacked = torch.cat(past_key_values)
    layers, batch, heads, tokens, head_dim = stacked.shape
    half = layers // 2
    keys = stacked[:half].transpose(2, 3).reshape(half, batch * heads, head_dim, tokens)
    values = stacked[half:].reshape(half, batch * heads, tokens, head_dim)
    return tuple(zip(keys, values))


# model_type -> a function rearranging prefix-tuning's key/value blocks for models with a legacy cache
# layout. Empty in peft 0.21 (transformers' Cache objects made BLOOM's entry unnecessary), and here.
TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING: dict = {}
