"""LoRA on `nn.Parameter`s (`target_parameters`): e.g. the stacked expert weights of MoE layers.

Some modules keep weights as bare parameters used inside their own forward (transformers' fused MoE
experts), so there is no `nn.Linear` whose forward LoRA could extend. `ParamWrapper` instead runs the
module with the parameter replaced by the adapted one:

    2-d parameter W (out, in):        W' = W + s B A,            A: (r, in),    B: (out, r)
    3-d parameter W (E, out, in):     W'[e] = W[e] + s B_e A_e,  A: (E r, in),  B: (out, E r)

with `A_e = A.view(E, r, in)[e]` (expert e's rows, contiguous) and `B_e = B.view(out, r, E)[:, :, e]`
(expert e's columns, interleaved), PEFT's layout. Several parameters of one module are wrapped one
around the other (in the module's parameter order); each wrapper substitutes its own parameter for the
duration of the call. Dropout, DoRA and `lora_bias` do not apply (there is no input to drop out or bias to
add), as in PEFT.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..._skip_init import empty_linear
from ...utils.other import get_submodules
from ...utils.warnings import NoMatchingPeftModuleError, PeftWarning
from .._targeting import modules_outside_adapters
from ..tuners_utils import BaseTunerLayer
from .layer import LoraLayer


@contextmanager
def _substituted(owner: nn.Module, name: str, value: torch.Tensor) -> Iterator[None]:
    """`owner.<name>` reads `value` inside the block (the Parameter itself is put back afterwards)."""
    original = owner._parameters[name]
    owner._parameters[name] = value
    try:
        yield
    finally:
        owner._parameters[name] = original


class ParamWrapper(LoraLayer, nn.Module):
    """LoRA on parameter `parameter_name` of the wrapped module (2-d, or 3-d with experts first)."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        parameter_name: str,
        r: int = 0,
        lora_alpha: int = 1,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
        use_dora: bool = False,
        lora_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.parameter_name = parameter_name
        param = self.get_param()
        if param.ndim not in (2, 3):
            raise ValueError(
                f"target_parameters supports 2-d (out, in) and 3-d (experts, out, in) parameters; "
                f"{parameter_name!r} has shape {tuple(param.shape)}."
            )
        self.num_experts = param.shape[0] if param.ndim == 3 else 1
        self.out_features, self.in_features = param.shape[-2], param.shape[-1]
        self._active_adapter = adapter_name
        self.update_layer(
            adapter_name,
            r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            init_lora_weights=init_lora_weights,
            use_rslora=use_rslora,
            use_dora=use_dora,
            lora_bias=lora_bias,
            lora_variant=self.kwargs.pop("lora_variant", None),
        )

    def get_param(self) -> nn.Parameter:
        return self.get_base_layer()._parameters[self.parameter_name]

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, **kwargs: Any) -> None:
        for option, message in (
            ("lora_dropout", "lora_dropout != 0"),
            ("use_dora", "use_dora=True"),
            ("lora_bias", "lora_bias=True"),
        ):
            if kwargs.get(option):
                raise ValueError(f"lora.{type(self).__name__} does not work with {message}.")
        variant = kwargs.get("lora_variant")
        if variant is not None:
            raise ValueError(
                f"lora.{type(self).__name__} (target_parameters) does not work when `{variant.config_field}` is set: "
                "it takes plain LoRA only."
            )
        super().update_layer(adapter_name, r, lora_alpha, **kwargs)

    def _create_factors(self, adapter_name: str, r: int, lora_bias: bool) -> None:
        rank = r * self.num_experts
        self.lora_A[adapter_name] = empty_linear(self.in_features, rank, bias=False)
        self.lora_B[adapter_name] = empty_linear(rank, self.out_features, bias=False)

    def _placement_reference(self) -> torch.Tensor:
        """Adapter tensors go to the targeted parameter's device and float dtype."""
        return self.get_param()

    def _delta_weight(self, adapter: str) -> torch.Tensor:
        """`s B A` (2-d), or per expert `s B_e A_e` stacked to (E, out, in)."""
        weight_A, weight_B = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        scaling = self.scaling[adapter]
        if self.num_experts == 1:
            return (weight_B @ weight_A) * scaling
        experts, r = self.num_experts, self.r[adapter]
        per_expert_A = weight_A.view(experts, r, self.in_features)
        per_expert_B = weight_B.view(self.out_features, r, experts).permute(2, 0, 1)
        return torch.bmm(per_expert_B, per_expert_A) * scaling

    def _adapted_param(self, names: list[str]) -> torch.Tensor:
        param = self.get_param()
        adapted = param
        for name in names:
            adapted = adapted + self.get_delta_weight(name).to(param.dtype)
        return adapted

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError(
                "Mixed-adapter batches (adapter_names=) are not supported for target_parameters adapters; run one "
                "adapter per batch."
            )
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if self.has_adapter(name)]
        if self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        with _substituted(self.get_base_layer(), self.parameter_name, self._adapted_param(active)):
            return self.base_layer(x, *args, **kwargs)

    # ----- merging (the targeted parameter, not `weight`) -----
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' deltas into the parameter; nested wrappers (other parameters) merge too."""
        names = self.active_adapters if adapter_names is None else list(adapter_names)
        pending = [n for n in names if self.has_adapter(n) and n not in self.merged_adapters]
        param = self.get_param()
        for name in pending:
            merged = param.data.float() + self.get_delta_weight(name).detach().float()
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(
                    f"NaNs or infs found in the merged weights of adapter '{name}': the adapter seems broken, so the "
                    "parameter was left unchanged."
                )
            param.data = merged.to(param.dtype)
            self.merged_adapters.append(name)
        if isinstance(self.base_layer, ParamWrapper):
            self.base_layer.merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge(self) -> None:
        if not self.merged_adapters:
            warnings.warn("Already unmerged. Nothing to do.", PeftWarning)
            return
        param = self.get_param()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            param.data = (param.data.float() - self.get_delta_weight(name).detach().float()).to(param.dtype)

    def extra_repr(self) -> str:
        return f"parameter_name={self.parameter_name!r},"


def _matches(targets: list[str], key: str) -> bool:
    return any(key == t or key.endswith("." + t) for t in targets)


def _existing_wrapper(module: nn.Module, parameter_name: str) -> ParamWrapper | None:
    while isinstance(module, ParamWrapper):
        if module.parameter_name == parameter_name:
            return module
        module = module.base_layer
    return None


def inject_parameters(tuner: Any, model: nn.Module, adapter_name: str) -> list[ParamWrapper]:
    """Wrap every parameter `config.target_parameters` names with a ParamWrapper for `adapter_name`."""
    config = tuner.peft_config[adapter_name]
    targets = config.target_parameters
    if not isinstance(targets, (list, tuple, set)) or not all(isinstance(t, str) for t in targets):
        raise TypeError("`target_parameters` must be a list of strings or None.")
    targets = list(targets)
    for pname in model._parameters:
        if _matches(targets, pname):
            raise ValueError(
                f"Targeting an nn.Parameter on the top-level module is not supported (parameter {pname!r})."
            )
    layers: list[ParamWrapper] = []
    for name, module in modules_outside_adapters(model):
        owner = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        names = [
            p
            for p in owner._parameters
            if owner._parameters[p] is not None and _matches(targets, f"{name}.{p}")
        ]
        if not names:
            continue
        if isinstance(module, BaseTunerLayer) and not isinstance(module, ParamWrapper):
            raise ValueError(
                f"Trying to wrap an `nn.Parameter` of layer '{name}' of type {type(owner).__name__}, which is not a valid "
                "target: the layer is already adapted through target_modules. Leave it out of target_modules (pass "
                "target_modules=[] to use target_parameters alone)."
            )
        kwargs = tuner._layer_kwargs(config, name)
        kwargs.pop("fan_in_fan_out", None)
        for pname in names:
            parent, current, attr = get_submodules(model, name)
            wrapper = _existing_wrapper(current, pname)
            if wrapper is not None:
                wrapper.update_layer(adapter_name, inference_mode=config.inference_mode, **kwargs)
            else:
                wrapper = ParamWrapper(current, adapter_name, parameter_name=pname, **kwargs)
                wrapper.set_adapter(tuner.active_adapter, inference_mode=config.inference_mode)
                setattr(parent, attr, wrapper)
            layers.append(wrapper)
    if not layers and not _module_targets_matched(tuner, adapter_name):
        raise NoMatchingPeftModuleError(
            "No `target_modules` passed but also no `target_parameters` found. Please check the values for these "
            f"arguments (target_parameters={targets})."
        )
    return layers


def _module_targets_matched(tuner: Any, adapter_name: str) -> bool:
    return any(
        isinstance(m, LoraLayer) and not isinstance(m, ParamWrapper) and m.has_adapter(adapter_name)
        for m in tuner.model.modules()
    )
