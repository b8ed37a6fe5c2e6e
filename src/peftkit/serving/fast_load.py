"""Loading a plain LoRA adapter straight into existing LoRA layers: what an adapter store does hundreds of
times, in a few milliseconds.

`PeftModel.load_adapter` is general: it injects the adapter (target matching over every module, new
factor modules initialised, then overwritten), loads a state dict through every module of the model and
walks the model again to set modes; for a 30-layer model that is a few hundred milliseconds, most of it
independent of the adapter's size. When the model already has LoRA layers at exactly the modules the file
names (the usual case when serving many adapters of one base model) and the adapter is plain LoRA (no
DoRA, no `lora_bias`, no `modules_to_save`, no trainable tokens, no replicated layers), loading is only
putting the file's tensors into each layer as the adapter's factors and recording its rank, alpha,
scaling and dropout: `load_plain_lora` does that, and returns False (having changed nothing) for any
adapter or model outside that case, which then takes the general path. The result is the same adapter
(`tests/serving/test_fast_load.py` compares both paths tensor by tensor and output by output).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import PeftConfig
from ..tuners._dropout import input_dropout
from ..tuners._scaling import rank_scaling
from ..tuners.lora.layer import Linear as LoraLinear
from ..utils.other import get_pattern_key
from ..utils.peft_types import PeftType
from ..utils.weights_io import read_adapter_weights

_PREFIX = "base_model.model."
_HALF = (torch.float16, torch.bfloat16)


def lora_layers_by_key(model: nn.Module) -> dict[str, LoraLinear]:
    """The model's LoRA Linear layers, by the module path an adapter file's keys use."""
    return {
        name: module
        for name, module in model.named_modules()
        if type(module) is LoraLinear and name.startswith(_PREFIX)
    }


def _is_plain(config: PeftConfig) -> bool:
    if config.peft_type != PeftType.LORA:
        return False
    plain_fields = {
        "use_dora": False,
        "lora_bias": False,
        "modules_to_save": None,
        "trainable_token_indices": None,
        "layer_replication": None,
        "target_parameters": None,
        "alora_invocation_tokens": None,
        "use_bdlora": None,
        "use_qalora": False,
        "velora_config": None,
        "arrow_config": None,
        "kasa_config": None,
        "monteclora_config": None,
    }
    for field, value in plain_fields.items():
        if getattr(config, field, value) not in (value, [], {}, False):
            return False
    return True


def _factors_by_layer(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]] | None:
    """{module path: {"A": ..., "B": ...}} from the file's keys; None for a key of any other form."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        for factor in ("A", "B"):
            suffix = f".lora_{factor}.weight"
            if key.endswith(suffix):
                factors.setdefault(key[: -len(suffix)], {})[factor] = tensor
                break
        else:
            return None
    if any(len(pair) != 2 for pair in factors.values()):
        return None
    return factors


def load_plain_lora(
    model: Any, folder: str, adapter_name: str, config: PeftConfig, layers: dict[str, LoraLinear]
) -> bool:
    """Load the plain LoRA adapter in `folder` as `adapter_name` into `layers` (from
    `lora_layers_by_key`); False, with nothing changed, when it is not that simple case."""
    if not _is_plain(config) or adapter_name in model.peft_config:
        return False
    device = next(iter(layers.values())).weight.device if layers else torch.device("cpu")
    factors = _factors_by_layer(read_adapter_weights(folder, device=device))
    if not factors or any(path not in layers for path in factors):
        return False
    for path, pair in factors.items():
        layer = layers[path]
        if pair["A"].shape[1] != layer.in_features or pair["B"].shape[0] != layer.out_features:
            return False  # a mismatch: the general path names it in its error
    for path, pair in factors.items():
        _put(layers[path], path, adapter_name, config, pair["A"], pair["B"])
    config.inference_mode = True
    model.peft_config[adapter_name] = config
    return True


def _put(
    layer: LoraLinear,
    path: str,
    name: str,
    config: PeftConfig,
    weight_A: torch.Tensor,
    weight_B: torch.Tensor,
) -> None:
    key = path[len(_PREFIX) :]
    rank = weight_A.shape[0]
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), key), config.lora_alpha)
    base_dtype = layer.get_base_layer().weight.dtype
    # as add_adapter + autocast_adapter_dtype would leave them: the base's float dtype, half precision as fp32
    dtype = torch.float32 if base_dtype in _HALF or not base_dtype.is_floating_point else base_dtype
    layer.r[name] = rank
    layer.lora_alpha[name] = alpha
    layer.scaling[name] = rank_scaling(alpha, rank, config.use_rslora)
    dropout = input_dropout(config.lora_dropout)
    dropout.training = layer.training  # a leaf module: no need for train()'s recursion
    layer.lora_dropout[name] = dropout
    layer.use_dora[name] = False
    layer.lora_bias[name] = False
    layer.lora_A[name] = _frozen_linear(weight_A.to(dtype))
    layer.lora_B[name] = _frozen_linear(weight_B.to(dtype))
    layer.lora_variant.pop(name, None)


def _frozen_linear(weight: torch.Tensor) -> nn.Linear:
    """An eval-mode, bias-free `nn.Linear` around `weight` (out, in), built without allocating or
    initialising a weight of its own (hundreds per adapter: the constructor's cost adds up)."""
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.__dict__.update(in_features=weight.shape[1], out_features=weight.shape[0], training=False)
    linear._parameters["weight"] = nn.Parameter(weight, requires_grad=False)
    linear._parameters["bias"] = None
    return linear


__all__ = ["load_plain_lora", "lora_layers_by_key"]
