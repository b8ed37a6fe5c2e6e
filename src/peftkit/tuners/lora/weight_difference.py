"""A fully fine-tuned model as a LoRA adapter of its base model (`convert_to_lora(..., base_model=base)`).

Every parameter of the fine-tuned model is compared with the base model's (they must have the same
names and shapes). A module whose changed parameters are only the weight and bias of a layer kind LoRA
adapts (Linear, Conv1D, Embedding, ungrouped ConvNd) becomes a LoRA target: the weight change is
factorised (`lowrank_factors`), a bias change goes exactly into `lora_B`'s bias (`lora_bias=True`; the
other converted layers then get a zero bias). Any other module with changed parameters of its own is
saved whole (`modules_to_save`). Unchanged modules are left out. The keys are an adapter file's
(`base_model.model.<module>...`), so the result loads onto `base_model` with `PeftModel.from_pretrained`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .._linear_kind import conv1d_type
from .config import LoraConfig
from .lowrank_factors import LoraFactors, factorise

_PREFIX = "base_model.model."
_LORA_KINDS = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _changed_parameters(base: nn.Module, tuned: nn.Module) -> dict[str, list[str]]:
    """Module name -> names of its own parameters that differ between the two models."""
    base_params = dict(base.named_parameters(remove_duplicate=False))
    tuned_params = dict(tuned.named_parameters(remove_duplicate=False))
    missing = sorted(set(base_params) ^ set(tuned_params))
    if missing:
        raise ValueError(
            f"The fine-tuned model and base_model do not have the same parameters (e.g. {missing[:5]}): pass the "
            "model the fine-tuned one was trained from, with the same architecture."
        )
    changed: dict[str, list[str]] = {}
    for key, tuned_param in tuned_params.items():
        base_param = base_params[key]
        if base_param.shape != tuned_param.shape:
            raise ValueError(
                f"Parameter {key} has shape {tuple(tuned_param.shape)} in the fine-tuned model and "
                f"{tuple(base_param.shape)} in base_model: they are not the same architecture."
            )
        if not torch.equal(base_param.detach().cpu(), tuned_param.detach().cpu()):
            module_name, _, param_name = key.rpartition(".")
            changed.setdefault(module_name, []).append(param_name)
    return changed


def _is_lora_kind(module: nn.Module) -> bool:
    return isinstance(module, (*_LORA_KINDS, conv1d_type())) and getattr(module, "groups", 1) == 1


def convert_weight_difference(
    base_model: nn.Module, finetuned_model: nn.Module, rank: int | float, progressbar: bool = False
) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """`(LoraConfig, state_dict)` of the LoRA adapter that turns `base_model` into `finetuned_model` (exactly
    at full rank); see the module docstring."""
    changed = _changed_parameters(base_model, finetuned_model)
    if not changed:
        raise ValueError(
            "The fine-tuned model's parameters equal base_model's: there is no change to convert."
        )
    lora_modules, saved_modules = [], []
    for name, params in changed.items():
        module = finetuned_model.get_submodule(name)
        if _is_lora_kind(module) and set(params) <= {"weight", "bias"}:
            lora_modules.append(name)
        else:
            saved_modules.append(name)
    with_bias = any("bias" in changed[name] for name in lora_modules)
    r = rank if isinstance(rank, int) else 1
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=set(),
        rank_pattern={},
        alpha_pattern={},
        lora_bias=with_bias,
        modules_to_save=saved_modules or None,
        base_model_name_or_path=_name_or_path(base_model),
    )
    state_dict: dict[str, torch.Tensor] = {}
    for name in tqdm(lora_modules, disable=not progressbar, desc="Converting to LoRA"):
        factors = _factorise_module(base_model, finetuned_model, name, rank)
        config.target_modules.add(name)
        if isinstance(rank, float):  # each layer's own rank (and alpha = rank: scaling 1)
            config.rank_pattern[name] = config.alpha_pattern[name] = factors.rank
        state_dict.update({f"{_PREFIX}{name}{suffix}": t for suffix, t in factors.tensors.items()})
        if with_bias and not isinstance(finetuned_model.get_submodule(name), nn.Embedding):
            state_dict[f"{_PREFIX}{name}.lora_B.bias"] = _bias_change(base_model, finetuned_model, name)
    for name in saved_modules:
        for param_name, param in finetuned_model.get_submodule(name).named_parameters():
            state_dict[f"{_PREFIX}{name}.{param_name}"] = param.detach()
    return config, state_dict


def _factorise_module(base: nn.Module, tuned: nn.Module, name: str, rank: int | float) -> LoraFactors:
    tuned_module = tuned.get_submodule(name)
    change = tuned_module.weight.detach() - base.get_submodule(name).weight.detach().to(tuned_module.weight)
    return factorise(tuned_module, change, rank, name)


def _bias_change(base: nn.Module, tuned: nn.Module, name: str) -> torch.Tensor:
    tuned_module, base_module = tuned.get_submodule(name), base.get_submodule(name)
    out_features = tuned_module.weight.shape[1 if isinstance(tuned_module, conv1d_type()) else 0]
    if tuned_module.bias is None:
        return tuned_module.weight.new_zeros(out_features)
    return tuned_module.bias.detach() - base_module.bias.detach().to(tuned_module.bias)


def _name_or_path(model: nn.Module) -> Any:
    return getattr(getattr(model, "config", None), "name_or_path", None) or None
