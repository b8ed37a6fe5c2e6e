"""`convert_to_lora` / `save_as_lora`: any adapter that changes layer weights, or a fully fine-tuned model's
weight difference, as a LoRA adapter of a chosen rank.

Each adapted layer's weight change (`_weight_change`: `get_delta_weight` for additive methods, `W' - W`
from the merge for the others, e.g. DoRA, OFT, IA3) is factorised by a truncated SVD
(`lowrank_factors`). The result is a plain LoRA adapter with the scaling folded into the factors
(`lora_alpha = r`), loadable by peft and peftkit, usable where only LoRA is (mixed-adapter batches,
hot-swapping, other libraries). The higher the rank, the closer it is to the original adapter; at the
full rank of the change it is exact.

With `base_model=`, `model` is a fully fine-tuned copy of `base_model` (same architecture, no adapter):
the changed weights of Linear, Conv1D, Embedding and convolution layers become LoRA factors, changed
biases of those layers the factors' bias (`lora_bias=True`, exact), and every other module with changed
parameters (layer norms, say) is saved whole through `modules_to_save`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..._version import __version__
from ...utils.atomic_io import staged_file
from ...utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from ...utils.modules_to_save import ModulesToSaveWrapper
from ...utils.peft_types import PeftType
from ...utils.warnings import PeftWarning
from ...utils.weights_io import prepare_for_saving, write_weights_file, written_shapes
from .._tuner_layer import BaseTunerLayer
from .._weight_change import conversion_refusal, weight_change
from .config import LoraConfig
from .lowrank_factors import LoraFactors, check_rank, factorise
from .weight_difference import convert_weight_difference

__all__ = ["convert_to_lora", "save_as_lora"]

_PEFT_PREFIX = "base_model.model."


def _convert_layer(layer: BaseTunerLayer, rank: int | float, adapter_name: str, name: str) -> LoraFactors:
    return factorise(layer.get_base_layer(), weight_change(layer, adapter_name), rank, name)


def _check_convertible(model: nn.Module, adapter_name: str) -> list[tuple[str, BaseTunerLayer]]:
    """The adapter layers holding `adapter_name`; a TypeError naming every layer type that cannot convert."""
    layers, refused = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        reason = conversion_refusal(module, adapter_name)
        if reason is not None:
            refused.setdefault(repr(type(module)), reason)
        elif module.has_adapter(adapter_name):
            layers.append((name, module))
    if refused:
        details = "; ".join(f"{kind}: {reason}" for kind, reason in refused.items())
        raise TypeError(f"Some module types on this model do not support LoRA conversion: {details}.")
    if not layers:
        raise TypeError(
            f"Could not detect any layer that supports LoRA conversion for adapter '{adapter_name}'."
        )
    return layers


def _new_config(peft_config: Any, rank: int | float) -> LoraConfig:
    """The converted adapter's config: the original's targets and base model, rank `rank`, scaling 1."""
    r = rank if isinstance(rank, int) else 1  # a threshold: every layer's rank goes in rank_pattern
    kwargs: dict[str, Any] = {"rank_pattern": {}, "alpha_pattern": {}, "exclude_modules": set()}
    if peft_config is None:
        return LoraConfig(r=r, lora_alpha=r, target_modules=[], **kwargs)
    if getattr(peft_config, "layers_pattern", None) is not None:
        kwargs["layers_pattern"] = peft_config.layers_pattern
        kwargs["layers_to_transform"] = peft_config.layers_to_transform
    target_modules = copy.copy(peft_config.target_modules)
    if isinstance(target_modules, (list, tuple)):
        target_modules = set(target_modules)
    return LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=target_modules if target_modules is not None else set(),
        base_model_name_or_path=peft_config.base_model_name_or_path,
        **kwargs,
    )


def _record_layer(config: LoraConfig, name: str, factors: LoraFactors, rank: int | float) -> None:
    """Target module `name` in `config`, with its own rank where it differs from `config.r`."""
    if factors.rank != rank or isinstance(config.target_modules, str):
        config.rank_pattern[name] = factors.rank
        config.alpha_pattern[name] = factors.rank
    else:
        config.target_modules.add(name)


def _modules_to_save_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The `modules_to_save` copies of `adapter_name`, under the keys adapter files give them."""
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            for param_name, param in module.modules_to_save[adapter_name].named_parameters():
                tensors[f"{name}.{param_name}"] = param.detach()
    return tensors


@torch.no_grad()
def convert_to_lora(
    model: nn.Module,
    rank: int | float,
    adapter_name: str = "default",
    progressbar: bool = False,
    compile_kwargs: dict | None = None,
    *,
    base_model: nn.Module | None = None,
) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Convert adapter `adapter_name` of `model` (or, with `base_model`, the fine-tuning of `model`) to LoRA.

    Args:
        model: a model with adapter layers (a PeftModel, or a model from `inject_adapter_in_model`); with
            `base_model`, a plain model fine-tuned from `base_model`.
        rank: the LoRA rank (int), or a float threshold in (0, 1]: per layer, the smallest rank keeping that
            fraction of the change's energy (sum of squared singular values); ranks then vary by layer.
        adapter_name: the adapter to convert (one at a time).
        progressbar: show a progress bar over the layers.
        compile_kwargs: if given, the per-layer conversion is `torch.compile`d with these arguments.
        base_model: the model `model` was fine-tuned from (keyword only; a peftkit addition).

    Returns:
        `(LoraConfig, state_dict)`: the adapter's config and its tensors under the keys of an adapter file.

    Raises:
        TypeError: a layer type cannot be converted (the message names it and why), or none can.
        ValueError: the rank is invalid or larger than a layer's weight allows.
    """
    check_rank(rank)
    if base_model is not None:
        return convert_weight_difference(base_model, model, rank, progressbar=progressbar)
    layers = _check_convertible(model, adapter_name)
    peft_config = getattr(model, "peft_config", {}).get(adapter_name)
    if peft_config is not None and peft_config.peft_type == PeftType.LORA:
        warnings.warn(
            "Converting a PEFT adapter to LoRA that is already a LoRA adapter. There is typically no need for that.",
            PeftWarning,
        )
    bias = getattr(peft_config, "bias", "none")
    if bias != "none":
        raise ValueError(
            f"The adapter's config sets bias={bias!r} (trained base biases), which a LoRA adapter file cannot "
            "hold apart from the base model; this is not supported."
        )
    config = _new_config(peft_config, rank)
    convert = _convert_layer if compile_kwargs is None else torch.compile(_convert_layer, **compile_kwargs)
    state_dict: dict[str, torch.Tensor] = {}
    for name, layer in tqdm(layers, disable=not progressbar, desc="Converting to LoRA"):
        factors = convert(layer, rank, adapter_name, name)
        _record_layer(config, name.removeprefix(_PEFT_PREFIX), factors, rank)
        state_dict.update({f"{name}{suffix}": tensor for suffix, tensor in factors.tensors.items()})
    if peft_config is not None and getattr(peft_config, "modules_to_save", None):
        config.modules_to_save = copy.copy(peft_config.modules_to_save)
        state_dict.update(_modules_to_save_tensors(model, adapter_name))
    return config, state_dict


def save_as_lora(
    path: str | os.PathLike,
    model: nn.Module,
    rank: int | float,
    adapter_name: str = "default",
    progressbar: bool = False,
    compile_kwargs: dict | None = None,
    *,
    base_model: nn.Module | None = None,
) -> None:
    """`convert_to_lora`, then write the result as an adapter folder at `path` (`adapter_config.json` and
    `adapter_model.safetensors`), loadable with `PeftModel.from_pretrained(base, path)` in peft and peftkit.

    The write is crash-safe: the weights are staged and read back, the config is written last, so an
    interrupted save leaves the old adapter or a folder that refuses to load. Arguments as for
    `convert_to_lora`.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        raise ValueError(
            f"save_as_lora writes an adapter folder, but {path!r} is a file; pass a folder path."
        )
    config, state_dict = convert_to_lora(
        model, rank, adapter_name, progressbar, compile_kwargs, base_model=base_model
    )
    tensors = prepare_for_saving(state_dict)
    os.makedirs(path, exist_ok=True)
    weights_path = os.path.join(path, SAFETENSORS_WEIGHTS_NAME)
    with staged_file(weights_path) as staged:
        write_weights_file(staged.tmp, tensors, metadata={"peftkit_version": __version__})
        if written_shapes(staged.tmp, safe=True) != {k: tuple(v.shape) for k, v in tensors.items()}:
            raise OSError(f"The LoRA weights written to {weights_path} do not read back as written.")
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(path, CONFIG_NAME))  # from here on, the folder refuses to load
        staged.commit()
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(path, WEIGHTS_NAME))  # a stale .bin of an earlier save
    config.save_pretrained(path)
