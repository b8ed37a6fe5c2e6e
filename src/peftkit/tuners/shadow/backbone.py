"""Where the decoder blocks are, and the shadow backbone that produces the initial shadow state `s0`.

"mirror" builds a fresh backbone of the base model's own class with a copy of its config, reduced to
`shadow_num_hidden_layers` (default 1) and optionally narrower; any other `shadow_model` is loaded with
transformers (`AutoModel`), or, for a "projected" checkpoint (`model_type ==
"causal_lm_with_hidden_projection"`), as its inner backbone plus its trained shadow -> base projection.
Diffusers transformers (Flux and other DiT stacks) are not supported here.
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

from safetensors.torch import load_file
from torch import nn

from ...utils.hub import resolve_adapter_file
from .config import ShadowConfig

_LAYER_LISTS = ("layers", "h")
_HIDDEN_SIZE_NAMES = ("hidden_size", "n_embd", "d_model")
PROJECTED_CHECKPOINT = "causal_lm_with_hidden_projection"


def _layer_list(module: nn.Module) -> tuple[nn.ModuleList, str] | None:
    for name in _LAYER_LISTS:
        candidate = getattr(module, name, None)
        if isinstance(candidate, nn.ModuleList):
            return candidate, name
    return None


def is_diffusion_transformer(model: nn.Module) -> bool:
    """A Diffusers-style transformer (`transformer_blocks` / `single_transformer_blocks`, no `layers`)."""
    return isinstance(getattr(model, "single_transformer_blocks", None), nn.ModuleList) or (
        isinstance(getattr(model, "transformer_blocks", None), nn.ModuleList)
        and not isinstance(getattr(model, "layers", None), nn.ModuleList)
    )


def check_not_diffusion(model: nn.Module) -> None:
    if is_diffusion_transformer(model):
        raise NotImplementedError(
            "ShadowPEFT on Diffusers transformers (Flux, DiT) is not implemented in peftkit: it adapts "
            "transformers decoder models. Use peft for diffusion models."
        )


def find_backbone(model: nn.Module) -> nn.Module:
    """The module holding the decoder block list (`LlamaModel` in `LlamaForCausalLM`, OPT's decoder)."""
    for attr in ("model", "transformer", "base_model", "decoder"):
        backbone = getattr(model, attr, None)
        if not isinstance(backbone, nn.Module):
            continue
        nested = getattr(backbone, "decoder", None)  # OPT: model.decoder.layers
        if isinstance(nested, nn.Module) and _layer_list(nested) is not None:
            return nested
        return backbone
    if _layer_list(model) is not None:
        return model
    raise AttributeError(
        "Unable to automatically locate the transformer backbone inside the supplied model "
        "(required when `target_modules` is not set). Please set `target_modules` explicitly "
        "to the decoder blocks you want to wrap, e.g. `r'.*\\.layers\\.\\d+$'`."
    )


def decoder_block_names(model: nn.Module) -> set[str]:
    """Full names of every decoder block of `model` (the default `target_modules`)."""
    backbone = find_backbone(model)
    found = _layer_list(backbone)
    if found is None:
        raise AttributeError(
            "Unable to automatically find a `nn.ModuleList` of decoder layers (expected `.layers`/`.h`) "
            "inside the backbone (required when `target_modules` is not set). Please set `target_modules` "
            "explicitly to the decoder blocks you want to wrap, e.g. `r'.*\\.layers\\.\\d+$'`."
        )
    layers, attr = found
    prefix = next(name for name, module in model.named_modules() if module is backbone)
    base = f"{prefix}.{attr}" if prefix else attr
    return {f"{base}.{i}" for i in range(len(layers))}


def hidden_size(config: Any) -> int:
    for name in _HIDDEN_SIZE_NAMES:
        if hasattr(config, name):
            return int(getattr(config, name))
    raise AttributeError("Unable to infer the hidden size from the model config.")


def _set_config_size(config: Any, names: tuple[str, ...], value: int) -> None:
    for name in names:
        if hasattr(config, name):
            setattr(config, name, int(value))
            return
    raise AttributeError(
        f"Unable to update the model config: none of the expected attributes {names} are defined. "
        'This is required when building a mirrored shadow backbone (`shadow_model="mirror"`). '
        "Please use a supported decoder architecture, or set `shadow_model` to a pretrained model "
        "id/path instead."
    )


def _fit_per_layer_fields(config: Any) -> None:
    """Per-layer lists sized for the base model (Qwen3's `layer_types`, `max_window_layers`) fitted to
    the reduced layer count, which the model class would otherwise reject."""
    try:
        num_layers = int(config.num_hidden_layers)
    except Exception:
        return
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        layer_types = list(layer_types) or ["full_attention"] * num_layers
        layer_types = layer_types[:num_layers] + [layer_types[-1]] * (num_layers - len(layer_types))
        config.layer_types = layer_types
    max_window = getattr(config, "max_window_layers", None)
    if max_window is not None:
        with contextlib.suppress(Exception):
            if int(max_window) > num_layers:
                config.max_window_layers = num_layers


def build_mirror_backbone(model: nn.Module, config: ShadowConfig) -> nn.Module:
    """A fresh backbone of the base backbone's class, with its config reduced as `config` asks."""
    base_backbone = find_backbone(model)
    reduced = copy.deepcopy(base_backbone.config)
    _set_config_size(
        reduced, ("num_hidden_layers", "n_layer", "num_layers"), config.shadow_num_hidden_layers or 1
    )
    if config.shadow_hidden_size is not None:
        _set_config_size(reduced, _HIDDEN_SIZE_NAMES, config.shadow_hidden_size)
    if config.shadow_intermediate_size is not None:
        _set_config_size(
            reduced, ("intermediate_size", "ffn_dim", "n_inner"), config.shadow_intermediate_size
        )
    if config.shadow_num_attention_heads is not None:
        _set_config_size(
            reduced, ("num_attention_heads", "n_head", "num_heads"), config.shadow_num_attention_heads
        )
    _fit_per_layer_fields(reduced)
    return type(base_backbone)(reduced)


def load_backbone(model_id: str) -> tuple[nn.Module, nn.Linear | None]:
    """(backbone, projection) from a model id or folder; the projection only for a projected checkpoint."""
    from transformers import AutoModel

    config_file = resolve_adapter_file(model_id, "config.json")
    if config_file is None:
        raise ValueError(f"'{model_id}' has no config.json: `shadow_model` must name a transformers model.")
    with open(config_file, encoding="utf-8") as f:
        raw_config = json.load(f)
    if raw_config.get("model_type") == PROJECTED_CHECKPOINT:
        return _load_projected(model_id, raw_config)
    return AutoModel.from_pretrained(model_id), None


def _load_projected(model_id: str, raw_config: dict) -> tuple[nn.Module, nn.Linear]:
    """The backbone (`shadow_model.*` weights) and its trained `shadow_hidden_projection` of a projected
    shadow checkpoint."""
    from transformers import AutoConfig, AutoModel

    inner = dict(raw_config["shadow_model_config"])
    backbone = AutoModel.from_config(AutoConfig.for_model(inner.pop("model_type"), **inner))
    weights_file = resolve_adapter_file(model_id, "model.safetensors")
    if weights_file is None:
        raise ValueError(f"'{model_id}' is a projected shadow checkpoint but has no model.safetensors.")
    weights = load_file(weights_file)
    prefix = "shadow_model."
    backbone.load_state_dict(
        {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True
    )
    projection_weight = weights.get("shadow_hidden_projection.weight")
    if projection_weight is None:
        raise ValueError(
            f"'{model_id}' is a projected shadow checkpoint but has no 'shadow_hidden_projection.weight'."
        )
    out_features, in_features = projection_weight.shape
    projection = nn.Linear(in_features, out_features, bias=False)
    projection.weight.data = projection_weight.to(projection.weight.dtype)
    return backbone, projection


def remove_embed_tokens(backbone: nn.Module) -> None:
    """Drop the backbone's own embedding table: it is driven with the base model's `inputs_embeds`."""
    if isinstance(getattr(backbone, "embed_tokens", None), nn.Module):
        del backbone.embed_tokens


def freeze_embeddings(backbone: nn.Module) -> None:
    """Keep a pretrained backbone's (large) input and output embeddings frozen."""
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        embeddings = None
        with contextlib.suppress(Exception):
            embeddings = getattr(backbone, getter)()
        if isinstance(embeddings, nn.Module):
            embeddings.requires_grad_(False)
