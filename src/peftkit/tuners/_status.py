"""get_layer_status / get_model_status: a readable summary of where adapters are and what state they are in."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from .tuners_utils import BaseTunerLayer


@dataclass
class TunerLayerStatus:
    name: str
    module_type: str
    enabled: bool
    active_adapters: list[str]
    merged_adapters: list[str]
    requires_grad: dict[str, bool | Literal["irregular"]]
    available_adapters: list[str]
    devices: dict[str, list[str]]
    quantization_backend: str | None = None


@dataclass
class TunerModelStatus:
    base_model_type: str
    adapter_model_type: str
    peft_types: dict[str, str]
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: bool | Literal["irregular"]
    active_adapters: list[str] | Literal["irregular"]
    merged_adapters: list[str] | Literal["irregular"]
    requires_grad: dict[str, bool | Literal["irregular"]]
    available_adapters: list[str]
    devices: dict[str, list[str]]
    quantization_backend: str | None = None


def _is_peft_model(model: nn.Module) -> bool:
    """Whether `model` is a PeftModel, told by its shape: PeftModel sits above the tuners (importing it
    here would be a cycle); it holds its tuner (or base model) as the submodule `base_model` and counts
    its parameters itself, which neither a tuner nor a transformers model does."""
    return "base_model" in model._modules and callable(getattr(model, "get_nb_trainable_parameters", None))


def _tuner(model: nn.Module) -> nn.Module:
    if isinstance(model, nn.Module) and _is_peft_model(model):
        return model.base_model
    if isinstance(model, nn.Module) and any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        return model
    raise TypeError(f"get_layer_status() got an invalid {type(model).__name__}: it holds no adapter layers.")


def _quantization_backend(module: BaseTunerLayer) -> str | None:
    name = type(module.get_base_layer()).__module__
    return "bitsandbytes" if name.startswith("bitsandbytes") else None


def get_layer_status(model: nn.Module) -> list[TunerLayerStatus]:
    """One entry per adapted layer: type, enabled, active/merged/available adapters, trainability, devices."""
    statuses = []
    for name, module in _tuner(model).named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        grads: dict[str, Any] = {}
        devices: dict[str, set[str]] = defaultdict(set)
        for attr in module.adapter_layer_names:
            for adapter, item in getattr(module, attr).items():
                params = list(item.parameters()) if isinstance(item, nn.Module) else [item]
                for param in params:
                    devices[adapter].add(param.device.type)
                    flag = param.requires_grad
                    grads[adapter] = flag if grads.get(adapter, flag) == flag else "irregular"
        statuses.append(
            TunerLayerStatus(
                name=name,
                module_type=repr(module).partition("(")[0],
                enabled=not module.disable_adapters,
                active_adapters=module.active_adapters,
                merged_adapters=list(module.merged_adapters),
                requires_grad=grads,
                available_adapters=sorted(module._get_available_adapters()),
                devices={k: sorted(v) for k, v in devices.items()},
                quantization_backend=_quantization_backend(module),
            )
        )
    if not statuses:
        raise ValueError("No adapter layers found in the model.")
    return statuses


def _agree(values: list[Any]) -> Any:
    return values[0] if all(v == values[0] for v in values) else "irregular"


def get_model_status(model: nn.Module) -> TunerModelStatus:
    """One summary for the whole model; fields that differ between layers read "irregular"."""
    tuner = _tuner(model)
    base = tuner.model if hasattr(tuner, "model") else tuner
    if _is_peft_model(model):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        params = list(model.parameters())
        trainable, total = sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
    layers = get_layer_status(model)
    grads: dict[str, Any] = {}
    devices: dict[str, set[str]] = defaultdict(set)
    for layer in layers:
        for adapter, flag in layer.requires_grad.items():
            grads[adapter] = flag if grads.get(adapter, flag) == flag else "irregular"
        for adapter, devs in layer.devices.items():
            devices[adapter].update(devs)
    configs = getattr(tuner, "peft_config", {})
    merged = _agree([sorted(layer.merged_adapters) for layer in layers])
    return TunerModelStatus(
        base_model_type=type(base).__name__,
        adapter_model_type=type(tuner).__name__,
        peft_types={k: getattr(c.peft_type, "value", str(c.peft_type)) for k, c in configs.items()},
        trainable_params=trainable,
        total_params=total,
        num_adapter_layers=len(layers),
        enabled=_agree([layer.enabled for layer in layers]),
        active_adapters=_agree([sorted(layer.active_adapters) for layer in layers]),
        merged_adapters=merged,
        requires_grad=grads,
        available_adapters=sorted({a for layer in layers for a in layer.available_adapters}),
        devices={k: sorted(v) for k, v in devices.items()},
        quantization_backend=_agree([layer.quantization_backend for layer in layers]),
    )
