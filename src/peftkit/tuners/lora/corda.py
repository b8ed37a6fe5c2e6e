"""CorDA (Yang et al., 2024): context-oriented decomposition of each weight, from a calibration pass.

For a targeted linear layer with weight `W` (out, in) and inputs `x` seen on calibration data:

1. covariance of the inputs, `C = (1/S) sum_calls (X / max X)^T (X / max X)` over the S forward calls
   (each call's inputs X, tokens as rows, scaled by their largest value as PEFT does), then damped,
   `C <- C + 0.01 * mean(diag C) * I`, so that it is invertible;
2. SVD of the context-weighted weight `W C = U S V^T`, so `W = U S (V^T C^-1)`;
3. the adapter takes r of these components, `B = U_r (S_r / s)^{1/2}`, `A = (S_r / s)^{1/2} (V^T C^-1)_r`
   (s: the LoRA scaling), and the base keeps the rest, `W_res = W - s B A`.

IPM ("instruction-previewed", `corda_method="ipm"`) takes the r largest components: the adapter starts
on the directions the task's context uses most. KPM ("knowledge-preserved", `"kpm"`) takes the r
smallest: the directions the context (world knowledge) relies on stay frozen in the base.

`preprocess_corda(model, lora_config, run_model)` runs steps 1-2 and leaves the components on each
targeted module (`module.eigens`); creating the adapter with `init_lora_weights="corda"` does step 3.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from ...utils.other import get_pattern_key
from .._targeting import is_targeted
from .inits import register_init_scheme
from .sub_configs import CordaConfig

_DAMPING = 0.01  # relative to the mean of the covariance's diagonal


@dataclass
class CordaEigens:
    """The r components kept for the adapter: `S_WC` (r,), `U_WC` (out, r), `V_WC = (V^T C^-1)^T` (in, r)."""

    S_WC: torch.Tensor
    U_WC: torch.Tensor
    V_WC: torch.Tensor


def _as_config(corda_config: Any) -> CordaConfig:
    if corda_config is None:
        return CordaConfig()
    return CordaConfig(**corda_config) if isinstance(corda_config, dict) else corda_config


def _targets(model: nn.Module, lora_config: Any) -> dict[str, nn.Module]:
    """The linear layers `lora_config` targets in `model`, by name."""
    from transformers.pytorch_utils import Conv1D

    config = lora_config
    if config.target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise ValueError(
                "preprocess_corda needs lora_config.target_modules (no default for this model type)."
            )

        config = copy.copy(lora_config)
        config.target_modules = set(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    found = {
        name: module
        for name, module in model.named_modules()
        if name and isinstance(module, (nn.Linear, Conv1D)) and is_targeted(config, name)
    }
    if not found:
        raise ValueError(
            f"preprocess_corda found no linear layer matching target_modules={config.target_modules}."
        )
    return found


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    from transformers.pytorch_utils import Conv1D

    weight = module.weight.detach()
    return weight.T if isinstance(module, Conv1D) else weight


@torch.no_grad()
def _collect_covariances(
    targets: dict[str, nn.Module], run_model: Callable[[], None], hooked_model: nn.Module | None, fp16: bool
) -> dict[str, torch.Tensor]:
    """Run the calibration and return each target's (undamped) input covariance."""
    hooked = (
        {name: hooked_model.get_submodule(name) for name in targets} if hooked_model is not None else targets
    )
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            x = (x.half() if fp16 else x.float()) / x.max()
            covariance = x.T @ x
            sums[name] = covariance if name not in sums else sums[name] + covariance
            counts[name] = counts.get(name, 0) + 1

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in hooked.items()]
    try:
        run_model()
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in targets if name not in sums]
    if missing:
        raise ValueError(
            f"run_model never called the targeted layers {missing[:5]}; CorDA needs their inputs."
        )
    return {name: sums[name].float() / counts[name] for name in targets}


def decompose(weight: torch.Tensor, covariance: torch.Tensor, r: int, method: str) -> CordaEigens:
    """CorDA's components of an (out, in) weight given its input covariance (steps 2 of the module doc)."""
    weight, covariance = weight.float(), covariance.float()
    damped = covariance + _DAMPING * covariance.diagonal().mean() * torch.eye(
        covariance.shape[0], device=covariance.device
    )
    U, S, Vh = torch.linalg.svd(weight @ damped, full_matrices=False)
    V = (Vh @ torch.linalg.inv(damped)).T
    if r > S.shape[0]:
        raise ValueError(f"CorDA rank r={r} exceeds the layer's rank {S.shape[0]}; use a smaller r.")
    keep = slice(0, r) if method == "ipm" else slice(S.shape[0] - r, S.shape[0])
    return CordaEigens(S_WC=S[keep].contiguous(), U_WC=U[:, keep].contiguous(), V_WC=V[:, keep].contiguous())


def _rank_for(lora_config: Any, name: str) -> int:

    key = get_pattern_key(lora_config.rank_pattern.keys(), name)
    return lora_config.rank_pattern.get(key, lora_config.r)


@torch.no_grad()
def preprocess_corda(
    model: nn.Module,
    lora_config: Any,
    run_model: Callable[[], None] | None = None,
    hooked_model: nn.Module | None = None,
) -> None:
    """Calibrate CorDA: leave `eigens` (see `CordaEigens`) on every layer `lora_config` targets.

    Args:
        model: the base model (before `get_peft_model`).
        lora_config: a LoraConfig with `init_lora_weights="corda"` and `corda_config`.
        run_model: runs the model on calibration samples (its forward inputs feed the covariances); may be
            None when `corda_config.covariance_file` or `cache_file` already exists.
        hooked_model: the model whose layers are observed while `run_model` runs (default: `model`).
    """
    config = _as_config(lora_config.corda_config)
    targets = _targets(model, lora_config)
    if config.cache_file and os.path.exists(config.cache_file):
        cached = torch.load(config.cache_file, map_location="cpu", weights_only=True)
        for name, module in targets.items():
            module.eigens = CordaEigens(**{k: v.to(module.weight.device) for k, v in cached[name].items()})
        return
    if config.covariance_file and os.path.exists(config.covariance_file):
        covariances = torch.load(config.covariance_file, map_location="cpu", weights_only=True)
    elif run_model is None:
        raise ValueError(
            "preprocess_corda needs run_model (a callable running the model on calibration data) unless "
            "corda_config.covariance_file or cache_file already exists."
        )
    else:
        covariances = _collect_covariances(
            targets, run_model, hooked_model, config.use_float16_for_covariance
        )
        if config.covariance_file:
            torch.save({k: v.cpu() for k, v in covariances.items()}, config.covariance_file)
    for index, (name, module) in enumerate(targets.items()):
        weight = _weight_out_in(module)
        module.eigens = decompose(
            weight, covariances[name].to(weight.device), _rank_for(lora_config, name), config.corda_method
        )
        if not config.prune_temporary_fields:
            module.covariance_matrix = covariances[name]
        if config.verbose:
            print(f"CorDA: decomposed {name} ({index + 1}/{len(targets)})")
    if config.cache_file:
        torch.save(
            {
                name: {k: getattr(m.eigens, k).cpu() for k in ("S_WC", "U_WC", "V_WC")}
                for name, m in targets.items()
            },
            config.cache_file,
        )


def init_corda(layer: Any, adapter_name: str) -> None:
    """Adapter factors and residual weight from the components `preprocess_corda` left on the layer."""
    base = layer.get_base_layer()
    eigens = getattr(base, "eigens", None)
    if eigens is None:
        raise ValueError(
            "init_lora_weights='corda' needs the CorDA calibration first: call "
            "peftkit.tuners.lora.corda.preprocess_corda(model, lora_config, run_model=...) before get_peft_model."
        )
    r, scaling = layer.r[adapter_name], layer.scaling[adapter_name]
    if eigens.S_WC.shape[0] != r:
        raise ValueError(
            f"The CorDA components on this layer have rank {eigens.S_WC.shape[0]}, the adapter r={r}: run "
            "preprocess_corda with the same LoraConfig (r, rank_pattern) as get_peft_model."
        )
    root = (eigens.S_WC.float() / scaling).sqrt()
    B = eigens.U_WC.float() * root[None, :]
    A = (eigens.V_WC.float() * root[None, :]).T
    weight = base.weight
    with torch.no_grad():
        out_in = layer._weight_out_in(weight.detach()).float()
        residual = out_in - scaling * (B.to(out_in.device) @ A.to(out_in.device))
        weight.data = layer._weight_out_in(residual).to(weight.dtype).contiguous()
        for param, value in ((layer.lora_A[adapter_name].weight, A), (layer.lora_B[adapter_name].weight, B)):
            if not param.is_meta:
                param.data = value.to(device=param.device, dtype=param.dtype).contiguous()
    del base.eigens


register_init_scheme("corda", init_corda)
