"""LoRA-GA (Wang et al., 2024): LoRA initialised from the gradient (`init_lora_weights="lora_ga"`).

`preprocess_loraga(model, config, train_step)` runs your `train_step` (forward and backward passes) with
only the targeted weights trainable, and keeps each one's mean gradient `G` (out, in) on its layer. When
the adapter is then created, each targeted Linear takes, from a randomized SVD of `G` (rank 4r, 4
iterations: `torch.svd_lowrank`, so it draws from torch's generator), its top 2r singular triplets
`(U, S, V)` and splits them between the factors (`LoraGAConfig.direction`; default "ArB2r"):

    A = V[:, :r]^T,   B = U[:, r:2r] diag(S[r:2r])      ("A2rBr": A the second r, B the first r;
                                                          "ArBr": A the odd, B the even components)

B is scaled (`scale`: "stable" by out^(1/4) / sqrt(stable_gamma), "weight_svd" to the weight's top
singular value, "gd_scale" both factors divided by the LoRA scaling), and the base weight becomes
`W - s B A`, so the model starts unchanged. A layer without a gradient (e.g. an adapter loaded from a
file, whose factors come from the file) keeps the default initialisation and its weight. A saved LoRA-GA
adapter is trained on the changed base; `save_pretrained(path_initial_model_for_weight_conversion=...)`
turns it into a plain LoRA for the original base, as for PiSSA.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...utils.atomic_io import atomic_target
from ...utils.peft_types import PeftType
from ...utils.warnings import PeftWarning
from .._registry import default_target_modules
from .._targeting import expand_all_linear, is_targeted, linear_like_types, modules_outside_adapters
from .config import LoraConfig
from .inits import register_init_scheme

GRADIENT_ATTRIBUTE = "_peft_loraga_grad"  # PEFT's name, on the targeted base layer (and in cache files)


def _targets(model: nn.Module, config: LoraConfig) -> list[tuple[str, nn.Module]]:
    """(name, module) of the targeted Linear and Conv1D layers; default or "all-linear" targets resolved."""
    modules = modules_outside_adapters(model)
    if config.target_modules is None:
        model_config = getattr(model, "config", None)
        model_type = getattr(model_config, "model_type", None)
        defaults = default_target_modules(PeftType.LORA).get(model_type)
        if defaults is None:
            raise ValueError("Please specify `target_modules` in `peft_config`")
        config.target_modules = set(defaults)
    expand_all_linear(config, model, modules)
    linear = linear_like_types()
    return [(name, m) for name, m in modules if isinstance(m, linear) and is_targeted(config, name)]


@torch.no_grad()
def preprocess_loraga(
    model: nn.Module,
    lora_config: LoraConfig,
    train_step: Callable[[], None],
    cache_file: str | None = None,
) -> None:
    """Estimate the gradient of every weight `lora_config` targets by running `train_step`, for LoRA-GA.

    Call it on the base model before `get_peft_model(model, lora_config)` (with `init_lora_weights="lora_ga"`
    and a `lora_ga_config`). `train_step()` should run forward and backward passes; the gradients of all of
    them are averaged. With `cache_file`, the gradients are read from it when it exists and written to it
    (atomically) otherwise; the file holds only tensors and is read with `torch.load(weights_only=True)`.
    """
    if lora_config.lora_ga_config is None:
        raise ValueError(
            "If you want to use LoRA-GA, please initialize the LoraConfig with "
            "init_lora_weights='lora_ga' and lora_ga_config=LoraGAConfig(...)."
        )
    targets = _targets(model, lora_config)
    for name, module in targets:
        if hasattr(module, "quant_state") or not module.weight.dtype.is_floating_point:
            raise ValueError(
                f"LoRA-GA does not support quantized models. Found quantized module: '{name}'. "
                "LoRA-GA requires full-precision gradients during preprocessing."
            )
    if not targets:
        raise ValueError(
            "No supported layers found for LoRA-GA initialization. LoRA-GA only supports nn.Linear and Conv1D "
            "layers. Please ensure your model contains at least one of these layer types in target_modules."
        )
    if cache_file is not None and os.path.isfile(cache_file) and os.path.getsize(cache_file) > 0:
        _read_cache(cache_file, targets)
        return
    _estimate_gradients(model, targets, train_step)
    if cache_file is not None:
        folder = os.path.dirname(os.path.abspath(cache_file))
        os.makedirs(folder, exist_ok=True)
        cache = {f"{name}.{GRADIENT_ATTRIBUTE}": getattr(m, GRADIENT_ATTRIBUTE) for name, m in targets}
        with atomic_target(cache_file) as tmp:
            torch.save(cache, tmp)


def _read_cache(cache_file: str, targets: list[tuple[str, nn.Module]]) -> None:
    device = targets[0][1].weight.device
    cache = torch.load(cache_file, map_location=device, weights_only=True)
    missing = [name for name, _ in targets if f"{name}.{GRADIENT_ATTRIBUTE}" not in cache]
    if missing:
        raise ValueError(
            f"The LoRA-GA cache {cache_file!r} has no gradient for {missing[:5]}: it was made for another model "
            "or other target_modules. Delete it (or pass another cache_file) to estimate the gradients again."
        )
    for name, module in targets:
        setattr(module, GRADIENT_ATTRIBUTE, cache[f"{name}.{GRADIENT_ATTRIBUTE}"])


def _estimate_gradients(
    model: nn.Module, targets: list[tuple[str, nn.Module]], train_step: Callable[[], None]
) -> None:
    """Run `train_step` with only the targets' weights trainable; keep each one's mean gradient (the
    accumulated gradient over the number of backward passes through the layer)."""
    was_training = model.training
    model.train()
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    counts = {id(module): 0 for _, module in targets}

    def count(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
        counts[id(module)] += 1

    hooks = []
    try:
        for param in model.parameters():
            param.requires_grad_(False)
        for _, module in targets:
            module.weight.requires_grad_(True)
            hooks.append(module.register_full_backward_hook(count))
        with torch.enable_grad(), warnings.catch_warnings():
            # expected: the layers' inputs are frozen, so the hooks fire on the outputs' gradients (as meant)
            warnings.filterwarnings(
                "ignore", message="Full backward hook is firing when gradients are computed"
            )
            train_step()
    finally:
        for hook in hooks:
            hook.remove()
        for name, param in model.named_parameters():
            param.requires_grad_(requires_grad.get(name, param.requires_grad))
        model.train(was_training)
    without = []
    for name, module in targets:
        if counts[id(module)] and module.weight.grad is not None:
            setattr(module, GRADIENT_ATTRIBUTE, module.weight.grad.detach() / counts[id(module)])
        else:
            without.append(name)
        module.weight.grad = None
    if without:
        warnings.warn(
            f"train_step() computed no gradient for {without[:10]}: LoRA-GA leaves their adapters at the default "
            "initialisation (B = 0).",
            PeftWarning,
        )


def init_lora_ga(layer: Any, adapter_name: str) -> None:
    """`init_lora_weights="lora_ga"`: the factors from the layer's estimated gradient, the base weight
    moved by `-s B A`; without a gradient, the default factors stay (PEFT's fallback)."""
    base = layer.get_base_layer()
    grad = getattr(base, GRADIENT_ATTRIBUTE, None)
    A_param, B_param = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    if grad is None or A_param.is_meta:
        return
    options = layer.kwargs.get("lora_ga_config")
    if options is None:
        raise ValueError(
            "lora_ga_config must be provided when init_lora_weights='lora_ga'. "
            "Please pass lora_ga_config=LoraGAConfig(...) to LoraConfig."
        )
    r, scaling = layer.r[adapter_name], layer.scaling[adapter_name]
    gradient = layer._weight_out_in(grad.float())
    if 2 * r > min(gradient.shape):
        raise ValueError(
            f"LoRA-GA takes 2r = {2 * r} singular components of the gradient, but the layer's weight has shape "
            f"{tuple(gradient.shape)}; use r <= {min(gradient.shape) // 2} for it (rank_pattern)."
        )
    A, B, S_B = _factors_from_gradient(gradient, r, options.direction)
    A, B = _scaled(layer, A, B, S_B, options, scaling)
    dtype = base.weight.dtype
    A, B = A.to(dtype), B.to(dtype)
    with torch.no_grad():
        A_param.data = A.contiguous().to(A_param.device)
        B_param.data = B.contiguous().to(B_param.device)
        weight = layer._weight_out_in(base.weight.data.float()) - scaling * (B.float() @ A.float())
        base.weight.data = layer._weight_out_in(weight.to(dtype)).contiguous()
    delattr(base, GRADIENT_ATTRIBUTE)


def _factors_from_gradient(
    gradient: torch.Tensor, r: int, direction: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A (r, in), B (out, r), B's singular values (r,)) from the top 2r singular triplets of `gradient`."""
    U, S, V = torch.svd_lowrank(gradient, q=min(4 * r, min(gradient.shape)), niter=4)
    U, S, Vh = U[:, : 2 * r], S[: 2 * r], V.T[: 2 * r]
    if direction == "ArBr":
        a_rows, b_cols = slice(1, 2 * r, 2), slice(0, 2 * r, 2)
    elif direction == "A2rBr":
        a_rows, b_cols = slice(r, 2 * r), slice(0, r)
    elif direction == "ArB2r":
        a_rows, b_cols = slice(0, r), slice(r, 2 * r)
    elif direction == "random":
        a_rows = b_cols = torch.randperm(2 * r)[:r]
    else:
        raise ValueError(
            f"Unknown LoraGAConfig.direction {direction!r}; use 'ArBr', 'A2rBr', 'ArB2r' or 'random'."
        )
    return Vh[a_rows], U[:, b_cols] * S[b_cols], S[b_cols]


def _scaled(
    layer: Any, A: torch.Tensor, B: torch.Tensor, S_B: torch.Tensor, options: Any, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors scaled as `options.scale` says."""
    weight = layer.get_base_layer().weight
    if options.scale == "stable":  # out: the stored weight's first dimension, as PEFT reads it
        return A, B * (weight.shape[0] ** 0.25 / options.stable_gamma**0.5)
    if options.scale == "weight_svd":
        _, weight_S, _ = torch.svd_lowrank(layer._weight_out_in(weight.data.float()), q=A.shape[0], niter=4)
        return (A, B * (weight_S[0] / S_B[0])) if S_B[0] > 0 else (A, B)
    if options.scale == "gd_scale":
        return A / scaling, B / scaling
    if options.scale == "unit":
        return A, B
    raise ValueError(
        f"Unknown LoraGAConfig.scale {options.scale!r}; use 'stable', 'weight_svd', 'gd_scale' or 'unit'."
    )


register_init_scheme("lora_ga", init_lora_ga)
