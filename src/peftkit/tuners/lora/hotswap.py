"""Hot-swapping LoRA adapters: replace a loaded adapter's weights in place.

The parameter objects stay the same (only their data changes), so a `torch.compile`d model keeps its
compiled graph. What can change without recompiling:

- the weights (always);
- the rank, down to smaller ones: A and B are zero-padded to the rank the model holds (zero rows of A
  and columns of B add nothing to B @ A). `prepare_model_for_compiled_hotswap(target_rank=...)` pads
  the loaded adapter up front so later adapters of any rank up to `target_rank` fit;
- alpha (the scaling): after `prepare_model_for_compiled_hotswap` each scaling is a 0-dim tensor that
  is updated in place; before it, a changed scaling is a new Python float (fine without compile).

Swapping in an adapter that targets other modules, needs a larger rank than the model holds, or differs
in a way that changes the module structure (DoRA, dropout, lora_bias) is refused before anything is
changed, with an error naming the modules or settings.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal

import torch
from torch import nn

from ...config import PeftConfig
from ...utils.hub import split_hub_kwargs
from ...utils.other import get_pattern_key
from ...utils.peft_types import PeftType
from ...utils.warnings import PeftWarning
from ...utils.weights_io import load_peft_weights
from .._adapter_keys import adapter_key_map, file_key_is_adapter
from .._scaling import rank_scaling
from .layer import LoraLayer

__all__ = [
    "CONFIG_KEYS_TO_CHECK",
    "check_hotswap_configs_compatible",
    "hotswap_adapter",
    "hotswap_adapter_from_state_dict",
    "prepare_model_for_compiled_hotswap",
]

_PEFT_PREFIX = "base_model.model."
# per method, the config settings that change which modules an adapter layer holds: two adapters must
# agree on them to be swapped in place (peft's name; rank, alpha and rsLoRA may differ here)
CONFIG_KEYS_TO_CHECK = {PeftType.LORA: ["use_dora", "lora_dropout", "lora_bias"]}
_STRUCTURAL_KEYS = tuple(CONFIG_KEYS_TO_CHECK[PeftType.LORA])


def _unwrap(model: nn.Module) -> nn.Module:
    """The model behind `torch.compile` (compiling wraps it in an OptimizedModule with `_orig_mod`)."""
    return getattr(model, "_orig_mod", model)


def _is_compiled(model: nn.Module) -> bool:
    if hasattr(model, "_orig_mod"):
        return True
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def _check_only_lora(model: nn.Module, adapter_names: list[str] | None = None) -> None:
    """Hot-swapping knows LoRA's tensors only; AdaLoRA layers subclass LoRA's, so check the configs."""
    configs = getattr(model, "peft_config", {})
    other = {
        name: str(configs[name].peft_type)
        for name in (adapter_names or list(configs))
        if name in configs and configs[name].peft_type != PeftType.LORA
    }
    if other:
        raise ValueError(
            f"Hot-swapping works for LoRA adapters only; {other} are of other methods. Load the new adapter "
            "with load_adapter instead."
        )


def _rank_dim(model_key: str) -> int | None:
    """Which dimension of an adapter tensor is the rank (None: the tensor has no rank dimension)."""
    parts = model_key.split(".")
    if "lora_A" in parts or "lora_embedding_A" in parts:
        return 0
    if ("lora_B" in parts and parts[-1] == "weight") or "lora_embedding_B" in parts:
        return 1
    return None


def _scaling_value(config: Any, module_name: str, rank: int) -> float:
    """The scaling a normal load would give layer `module_name` for `config` (patterns honoured)."""
    alpha_key = get_pattern_key(config.alpha_pattern.keys(), module_name)
    alpha = config.alpha_pattern.get(alpha_key, config.lora_alpha)
    return rank_scaling(alpha, rank, config.use_rslora)


# ----- preparation -----
def prepare_model_for_compiled_hotswap(
    model: nn.Module,
    *,
    target_rank: int | None = None,
    config: Any | dict[str, Any] | None = None,
    check_compiled: Literal["error", "warn", "ignore"] = "error",
) -> None:
    """Prepare a model with a loaded LoRA adapter so later hot-swaps never recompile it.

    Call it after loading the first adapter and before `torch.compile`. Scalings become 0-dim tensors
    (updated in place by `hotswap_adapter`), and with `target_rank` every adapter is zero-padded to that
    rank (outputs are unchanged: the padding is zeros).

    Args:
        model: the PeftModel (or model with injected LoRA layers), not yet compiled.
        target_rank: the largest rank among the adapters that will be swapped in.
        config: a LoraConfig or a dict of them: their `r` and `rank_pattern` are set to `target_rank`.
        check_compiled: what to do when the model is already compiled: "error", "warn" or "ignore".

    Raises:
        ValueError: the model is compiled (with "error"), has no LoRA layer, or an adapter's rank is
            already larger than `target_rank`.
    """
    if check_compiled not in ("error", "warn", "ignore"):
        raise ValueError(f"check_compiled should be 'error', 'warn' or 'ignore', got {check_compiled!r}.")
    if _is_compiled(model):
        message = "Call prepare_model_for_compiled_hotswap *before* compiling the model"
        if check_compiled == "error":
            raise ValueError(message)
        if check_compiled == "warn":
            warnings.warn(
                message + "; the compiled graph may not use the prepared tensors.", PeftWarning, stacklevel=2
            )
    _check_only_lora(_unwrap(model))
    layers = _lora_layers(_unwrap(model))
    if not layers:
        raise ValueError(
            "No adapter layers found on the model, make sure call `prepare_model_for_compiled_hotswap` after "
            "loading the first adapter and before loading the second adapter."
        )
    if target_rank is not None:
        if target_rank <= 0:
            raise ValueError(f"target_rank must be a positive integer, got {target_rank}.")
        for _, layer in layers:  # check all before changing any
            for adapter in layer.scaling:
                held = _held_rank(layer, adapter)
                if held > target_rank:
                    raise ValueError(
                        f"Trying to pad the adapter to the target rank {target_rank}, but the original rank is "
                        f"larger ({held}). This is not possible."
                    )
            _check_paddable(layer, target_rank)
    for _, layer in layers:
        for adapter in list(layer.scaling):
            if target_rank is not None:
                _pad_adapter(layer, adapter, target_rank)
            _scaling_to_tensor(layer, adapter)
    if config is not None and target_rank is not None:
        for cfg in config.values() if isinstance(config, dict) else [config]:
            cfg.r = target_rank
            cfg.rank_pattern = dict.fromkeys(cfg.rank_pattern or {}, target_rank)


def _held_rank(layer: nn.Module, adapter: str) -> int:
    if adapter in layer.lora_A:
        return layer.lora_A[adapter].weight.shape[0]
    return layer.lora_embedding_A[adapter].shape[0]


def _check_paddable(layer: nn.Module, target_rank: int) -> None:
    groups = getattr(layer.get_base_layer(), "groups", 1)
    ranks = {_held_rank(layer, a) for a in layer.scaling}
    if groups > 1 and ranks != {target_rank}:
        raise NotImplementedError(
            f"Padding the rank of LoRA on a grouped convolution (groups={groups}) is not supported; use "
            f"target_rank equal to the adapter's rank ({sorted(ranks)})."
        )


def _padded(param: torch.Tensor, dim: int, size: int) -> nn.Parameter:
    shape = list(param.shape)
    shape[dim] = size
    new = param.new_zeros(shape)
    new.narrow(dim, 0, param.shape[dim]).copy_(param.detach())
    return nn.Parameter(new, requires_grad=param.requires_grad)


def _pad_adapter(layer: nn.Module, adapter: str, rank: int) -> None:
    """Zero-pad adapter `adapter` of `layer` to `rank` (new parameters: this runs before compiling)."""
    if _held_rank(layer, adapter) == rank:
        return
    if adapter in layer.lora_A:
        lora_A, lora_B = layer.lora_A[adapter], layer.lora_B[adapter]
        lora_A.weight = _padded(lora_A.weight, 0, rank)
        lora_B.weight = _padded(lora_B.weight, 1, rank)
        # keep the modules' own size attributes true (they show in repr and some code reads them)
        for module, attr in (
            (lora_A, "out_features"),
            (lora_A, "out_channels"),
            (lora_B, "in_features"),
            (lora_B, "in_channels"),
        ):
            if hasattr(module, attr):
                setattr(module, attr, rank)
    else:
        layer.lora_embedding_A[adapter] = _padded(layer.lora_embedding_A[adapter], 0, rank)
        layer.lora_embedding_B[adapter] = _padded(layer.lora_embedding_B[adapter], 1, rank)


def _scaling_to_tensor(layer: nn.Module, adapter: str) -> None:
    value = layer.scaling[adapter]
    if torch.is_tensor(value):
        return
    device = next((t.device for t in layer._adapter_tensors(adapter)), torch.device("cpu"))
    layer.scaling[adapter] = torch.tensor(float(value), device=device)


# ----- swapping -----
def check_hotswap_configs_compatible(config0: PeftConfig, config1: PeftConfig) -> None:
    """Raise ValueError when adapter configs differ in a way a hot-swap cannot follow in place.

    Rank, alpha, alpha/rank patterns and rsLoRA may differ (they only change the scaling or the zero
    padding); the method, DoRA, dropout and lora_bias change the layers' structure and must match.
    """
    if config0.peft_type != config1.peft_type or config1.peft_type != PeftType.LORA:
        raise ValueError(
            f"Hot-swapping works for LoRA adapters only, got {config0.peft_type} and {config1.peft_type}."
        )
    diffs = [
        f"{key}: {getattr(config0, key, None)!r} != {getattr(config1, key, None)!r}"
        for key in _STRUCTURAL_KEYS
        if getattr(config0, key, None) != getattr(config1, key, None)
    ]
    if diffs:
        raise ValueError(
            f"Incompatible PEFT configs for hot-swapping ({'; '.join(diffs)}): these settings change the "
            "adapter layers' structure. Load the new adapter with load_adapter instead."
        )


def hotswap_adapter(
    model: nn.Module,
    model_name_or_path: str | os.PathLike,
    adapter_name: str,
    torch_device: str | None = None,
    **kwargs: Any,
) -> None:
    """Replace the weights (and scalings) of loaded LoRA adapter `adapter_name` with another adapter's.

    Args:
        model: the PeftModel holding `adapter_name` (compiled or not).
        model_name_or_path: the new adapter (local folder or Hub repo id).
        adapter_name: the adapter to overwrite; it keeps its name.
        torch_device: where to read the new weights (default: beside the adapter's current weights).
        kwargs: `subfolder`, `revision`, `cache_dir`, `token`, `local_files_only`, `force_download`.
    """
    inner = _unwrap(model)
    if adapter_name not in getattr(inner, "peft_config", {}):
        raise ValueError(f"The model has no adapter named {adapter_name!r} to hot-swap.")
    hub_kwargs = split_hub_kwargs(kwargs)
    if kwargs:
        raise TypeError(f"hotswap_adapter() got unexpected keyword arguments {sorted(kwargs)}.")
    config_kwargs = {k: v for k, v in hub_kwargs.items() if k != "force_download"}
    config = PeftConfig.from_pretrained(os.fspath(model_name_or_path), **config_kwargs)
    check_hotswap_configs_compatible(inner.peft_config[adapter_name], config)
    if torch_device is None:
        torch_device = next(
            (p.device for n, p in inner.named_parameters() if f".{adapter_name}." in n), "cpu"
        )
    state_dict = load_peft_weights(os.fspath(model_name_or_path), device=str(torch_device), **hub_kwargs)
    hotswap_adapter_from_state_dict(model, state_dict, adapter_name, config)


def hotswap_adapter_from_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    adapter_name: str,
    config: PeftConfig,
    parameter_prefix: str = "lora_",
) -> None:
    """Overwrite adapter `adapter_name` in place with `state_dict` (file keys, as `load_peft_weights` gives).

    Everything is checked before anything changes: the new adapter must target exactly the modules the
    loaded one targets, with ranks no larger than those held.

    Raises:
        RuntimeError: other target modules, a larger rank, a shape that does not fit, or a merged adapter.
    """
    inner = _unwrap(model)
    if adapter_name not in getattr(inner, "peft_config", {}):
        raise ValueError(f"The model has no adapter named {adapter_name!r} to hot-swap.")
    _check_only_lora(inner, [adapter_name])
    plan, layer_ranks = _plan_swap(inner, state_dict, adapter_name, parameter_prefix)
    scalings = _plan_scalings(inner, adapter_name, config, layer_ranks)
    with torch.no_grad():
        for param, new, rank_dim in plan:
            if rank_dim is not None and new.shape[rank_dim] != param.shape[rank_dim]:
                param.zero_()
                param.narrow(rank_dim, 0, new.shape[rank_dim]).copy_(new)
            else:
                param.copy_(new)
    recompiles = False
    for layer, value in scalings:
        current = layer.scaling[adapter_name]
        if torch.is_tensor(current):
            current.fill_(value)
        elif current != value:
            layer.scaling[adapter_name] = value
            recompiles = True
    if recompiles and _is_compiled(model):
        warnings.warn(
            "The new adapter has other scalings (alpha or rank) and the model was not prepared with "
            "prepare_model_for_compiled_hotswap, so the compiled model will recompile.",
            PeftWarning,
            stacklevel=2,
        )


def _normalise(key: str) -> str:
    return key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key


def _plan_swap(
    model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str, prefix: str
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, int | None]], dict[str, int]]:
    """(parameter, new tensor, rank dim) for every adapter tensor, and the new rank per layer name."""
    mapping = adapter_key_map(model, adapter_name)
    expected = {
        _normalise(file_key): key
        for key, file_key in mapping.items()
        if file_key_is_adapter(file_key, key) and (prefix in key or ".modules_to_save." in key)
    }
    given = {_normalise(k): v for k, v in state_dict.items()}
    unexpected = sorted(set(given) - set(expected))
    missing = sorted(set(expected) - set(given))
    if unexpected or missing:
        lines = []
        if unexpected:
            lines.append(
                f"the new adapter has tensors the loaded one does not (other targets?): {unexpected[:6]}"
            )
        if missing:
            lines.append(f"the loaded adapter has tensors the new one lacks: {missing[:6]}")
        raise RuntimeError(
            f"Hot swapping the adapter did not succeed: {'; '.join(lines)}. Hot-swapping needs both adapters to "
            "target the same modules; load the new adapter with load_adapter instead."
        )
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    plan: list[tuple[torch.Tensor, torch.Tensor, int | None]] = []
    layer_ranks: dict[str, int] = {}
    for file_key, model_key in expected.items():
        param, new = tensors[model_key], given[file_key]
        rank_dim = _rank_dim(model_key)
        _check_fits(model_key, param, new, rank_dim)
        if rank_dim == 0:
            layer_ranks[model_key.split(f".{prefix}")[0]] = new.shape[0]
        plan.append((param, new, rank_dim))
    _check_not_merged(model, adapter_name)
    return plan, layer_ranks


def _check_fits(key: str, param: torch.Tensor, new: torch.Tensor, rank_dim: int | None) -> None:
    same_rest = new.dim() == param.dim() and all(
        a == b for d, (a, b) in enumerate(zip(param.shape, new.shape)) if d != rank_dim
    )
    if not same_rest:
        raise RuntimeError(
            f"Hot swapping the adapter did not succeed: '{key}' holds shape {tuple(param.shape)}, the new adapter "
            f"has {tuple(new.shape)}. The new adapter was made for another base model."
        )
    if rank_dim is not None and new.shape[rank_dim] > param.shape[rank_dim]:
        raise RuntimeError(
            f"Hot swapping the adapter did not succeed: the new adapter has rank {new.shape[rank_dim]} at '{key}', "
            f"larger than the rank {param.shape[rank_dim]} the model holds. Call "
            f"prepare_model_for_compiled_hotswap(model, target_rank={new.shape[rank_dim]}) (or larger) after loading "
            "the first adapter and before compiling."
        )


def _check_not_merged(model: nn.Module, adapter_name: str) -> None:
    merged = [name for name, layer in _lora_layers(model) if adapter_name in layer.merged_adapters]
    if merged:
        raise RuntimeError(
            f"Adapter {adapter_name!r} is merged into the base weights of {merged[:3]}; unmerge it before hot-swapping."
        )


def _plan_scalings(
    model: nn.Module, adapter_name: str, config: Any, layer_ranks: dict[str, int]
) -> list[tuple[nn.Module, float]]:
    plan = []
    for name, layer in _lora_layers(model):
        if adapter_name not in layer.scaling or name not in layer_ranks:
            continue
        plan.append((layer, _scaling_value(config, _normalise(name), layer_ranks[name])))
    return plan
