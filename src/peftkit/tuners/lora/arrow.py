"""Arrow routing among LoRA task adapters (Ostapenko et al., 2024), with GenKnowSub (Belofsky et al., 2025).

A router adapter (`arrow_config`, named "arrow_router" by `create_arrow_model`) computes, per token `x`
and over the layer's task adapters `e` (each `s_e B_e A_e`):

    p_e = top right singular vector of B_e A_e            (the expert's prototype, sign-free)
    c = softmax(top-k(|<x, p_e>|) / temperature)          (the other experts' scores are -inf)
    delta(x) = dropout(sum_e c_e s_e B_e A_e x)

so each token uses the `top_k` experts most aligned with it. The prototypes come from 15 power-iteration
steps on `A^T (B^T B) A` (never forming `B A`), from a seeded generator when `rng_seed` is set. With
`use_gks`, before the first routing the mean of the general adapters' A (and B) is subtracted from each
task adapter's A (and B), in place ("forgetting by negation" of general knowledge); adapters added later
get the same subtraction at their first routing. The router's own A and B are unused (and B = 0), and it
cannot be merged: the experts are chosen per token.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ...utils.lazy_exports import lazy_exports
from .layer import Linear, LoraLayer
from .sub_configs import ArrowConfig
from .variants import LoraVariant, add_adapter_container

# PEFT code imports create_arrow_model from here; it builds a PeftModel (a floor above): imported when used
__getattr__, __dir__ = lazy_exports(globals(), {"create_arrow_model": "peftkit.arrow_model"})

TASK_ADAPTER_PREFIX = "task_"
GKS_ADAPTER_PREFIX = "gks_"
ROUTER_ADAPTER_NAME = "arrow_router"
_GKS_NAME = re.compile(rf"{GKS_ADAPTER_PREFIX}\d+")
_POWER_ITERATIONS = 15
_EPS = 1e-8


class ArrowLoraLinearLayer(nn.Module):
    """The router of one layer: which adapters are experts, their prototypes, and the routing (PEFT's name)."""

    def __init__(self, in_features: int, arrow_config: ArrowConfig) -> None:
        super().__init__()
        self.in_features = in_features
        self.top_k, self.temperature = arrow_config.top_k, arrow_config.router_temperature
        self.rng_seed, self.use_gks = arrow_config.rng_seed, arrow_config.use_gks
        self.task_adapter_names = list(arrow_config.task_adapter_names or [])
        self.gks_adapter_names = list(arrow_config.gks_adapter_names or [])
        self.gks_done = False
        self.gks_added_adapter_names: list[str] = []  # experts added after GenKnowSub ran
        self._protos_ready = False

    def on_adapter_change(self, expert_names: list[str]) -> None:
        """The layer's experts are now `expert_names`: prototypes are rebuilt at the next routing, and added
        experts get GenKnowSub then."""
        if sorted(expert_names) == sorted(self.task_adapter_names):
            return
        if len(expert_names) > len(self.task_adapter_names):
            self.gks_added_adapter_names = [n for n in expert_names if n not in self.task_adapter_names]
        self.task_adapter_names = list(expert_names)
        self._protos_ready = False

    @torch.no_grad()
    def gen_know_sub(self, lora_A: nn.ModuleDict, lora_B: nn.ModuleDict) -> None:
        """Subtract the general adapters' mean A and mean B from the task adapters (once per expert)."""
        if not self.use_gks or (self.gks_done and not self.gks_added_adapter_names):
            return
        mean_A = torch.stack([lora_A[n].weight for n in self.gks_adapter_names]).mean(0)
        mean_B = torch.stack([lora_B[n].weight for n in self.gks_adapter_names]).mean(0)
        for name in self.gks_added_adapter_names if self.gks_done else self.task_adapter_names:
            lora_A[name].weight.sub_(mean_A)
            lora_B[name].weight.sub_(mean_B)
        self.gks_done, self.gks_added_adapter_names = True, []

    def top_right_singular_vec_from_BA(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """The top right singular vector of `B A` (fp32, up to sign): power iteration on `A^T (B^T B) A`."""
        A, B = A.float(), B.float()
        gram = B.T @ B
        generator = None
        if self.rng_seed is not None:
            generator = torch.Generator(device=A.device.type).manual_seed(int(self.rng_seed))
        v = torch.randn(A.shape[1], device=A.device, generator=generator)
        v = v / (v.norm() + _EPS)
        for _ in range(_POWER_ITERATIONS):
            w = A.T @ (gram @ (A @ v))
            v = w / (w.norm() + _EPS)
        return v

    @torch.no_grad()
    def build_prototypes(self, lora_A: nn.ModuleDict, lora_B: nn.ModuleDict) -> None:
        if self._protos_ready:
            return
        if len(self.task_adapter_names) < self.top_k:
            raise ValueError(
                f"Arrow routes each token through top_k={self.top_k} task adapters, but this layer has "
                f"{len(self.task_adapter_names)} ({self.task_adapter_names}); lower ArrowConfig.top_k or load more "
                "task adapters."
            )
        prototypes = []
        for name in self.task_adapter_names:
            A, B = lora_A[name].weight, lora_B[name].weight
            prototypes.append(self.top_right_singular_vec_from_BA(A, B).to(dtype=A.dtype, device=A.device))
        self.register_buffer("prototypes", torch.stack(prototypes), persistent=False)
        self._protos_ready = True

    def forward(
        self, x: torch.Tensor, lora_A: nn.ModuleDict, lora_B: nn.ModuleDict, dropout: nn.Module, scaling: dict
    ) -> torch.Tensor:
        names = self.task_adapter_names
        tokens = x.reshape(-1, x.shape[-1])
        similarity = (tokens @ self.prototypes.T).abs()  # (tokens, experts)
        top, index = torch.topk(similarity, self.top_k, dim=1)
        scores = torch.full_like(similarity, float("-inf")).scatter(1, index, top)
        coefficients = torch.softmax(scores / self.temperature, dim=1)
        scales = torch.tensor([scaling[n] for n in names], device=tokens.device, dtype=tokens.dtype)
        A = torch.stack([lora_A[n].weight for n in names])  # (experts, r, in)
        B = torch.stack([lora_B[n].weight for n in names])  # (experts, out, r)
        # each expert's rank-r activations, weighted by its coefficient and scaling, then B summed over experts
        # (no (tokens, experts, out) tensor)
        hidden = torch.einsum("tf,erf->ter", tokens, A) * (coefficients * scales).unsqueeze(-1)
        delta = dropout(torch.einsum("ter,eor->to", hidden, B))
        return delta.reshape(*x.shape[:-1], delta.shape[-1])


class ArrowVariant(LoraVariant):
    """The Arrow router adapter on a Linear layer (plain, transformers' Conv1D or bitsandbytes)."""

    name = "Arrow"
    config_field = "arrow_config"
    supports_merge = False  # the experts are chosen per token: no single weight represents the router
    lora_conversion_refusal = (
        "Arrow routes each token among its task adapters: its effect depends on the input"
    )

    def __init__(self, config: ArrowConfig) -> None:
        self.config = config

    def init(self, layer: Any, adapter_name: str, inference_mode: bool = False) -> None:
        if not isinstance(layer, Linear) or type(layer).__name__ == "ParamWrapper":
            raise ValueError(
                f"Arrow (arrow_config) routes among LoRA adapters of linear layers only, not of "
                f"{type(layer.get_base_layer()).__name__}."
            )
        routers = add_adapter_container(layer, "lora_arrow", nn.ModuleDict, trainable=False)
        routers[adapter_name] = ArrowLoraLinearLayer(layer.in_features, self.config)
        routers[adapter_name].on_adapter_change(_experts(layer, exclude=adapter_name))

    def on_adapters_changed(self, layer: Any, adapter_name: str) -> None:
        layer.lora_arrow[adapter_name].on_adapter_change(_experts(layer, exclude=adapter_name))

    def forward(
        self, layer: Any, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        router = layer.lora_arrow[adapter_name]
        router.gen_know_sub(layer.lora_A, layer.lora_B)
        router.build_prototypes(layer.lora_A, layer.lora_B)
        x = layer._cast_input_dtype(x, layer.lora_A[router.task_adapter_names[0]].weight.dtype)
        delta = router(x, layer.lora_A, layer.lora_B, layer.lora_dropout[adapter_name], layer.scaling)
        return layer._add_adapter_output(result, delta)


def _experts(layer: Any, exclude: str) -> list[str]:
    """The layer's task adapters: all but routers (`exclude`, any Arrow adapter) and general ones (`gks_<i>`)."""
    return [
        name
        for name in layer.lora_A
        if name != exclude
        and not isinstance(layer.lora_variant.get(name), ArrowVariant)
        and _GKS_NAME.fullmatch(name) is None
    ]


def _adapted_layers(model: nn.Module, adapter_name: str) -> dict[str, Any]:
    """Module name -> LoRA layer holding `adapter_name` (names as in `model.named_modules()`)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and module.has_adapter(adapter_name)
    }


def check_loaded_lora_compatibility_arrow(
    model: nn.Module, adapter_names: list[str]
) -> tuple[list[str], int]:
    """(the sorted names of the modules the adapters adapt, their rank) when every adapter in `adapter_names`
    adapts the same modules with the same rank and factor shapes; a `ValueError` naming the first that
    does not, otherwise. Names are relative to the tuner's model when `model` is a PeftModel."""
    root = getattr(getattr(model, "base_model", None), "model", model)
    reference: dict[str, tuple] | None = None
    for name in adapter_names:
        layers = _adapted_layers(root, name)
        shapes = {
            key: (tuple(layer.lora_A[name].weight.shape), tuple(layer.lora_B[name].weight.shape))
            for key, layer in layers.items()
        }
        if not shapes:
            raise ValueError(f"Adapter '{name}' adapts no LoRA layer of the model.")
        ranks = {a[0] for a, _ in shapes.values()}
        if len(ranks) > 1:
            raise ValueError(
                f"[{name}] has several ranks {sorted(ranks)}: Arrow needs one rank for all experts."
            )
        if reference is None:
            reference = shapes
            continue
        if set(shapes) != set(reference):
            raise ValueError(
                f"[{name}] target_modules mismatch:\n  this adapter -> {sorted(shapes)}\n  reference   -> "
                f"{sorted(reference)}"
            )
        for key, pair in shapes.items():
            if pair[0][0] != reference[key][0][0]:
                raise ValueError(f"[{name}] rank mismatch: {pair[0][0]} != {reference[key][0][0]}")
            if pair != reference[key]:
                raise ValueError(f"[{name}] shape mismatch at {key}: {pair} != {reference[key]}")
    assert reference is not None
    return sorted(reference), next(iter(reference.values()))[0][0]


def ensure_adapters_target_linear_layers_only(model: nn.Module, adapter_names: list[str]) -> None:
    """Raise a `TypeError` listing every layer of `adapter_names` that is not a LoRA linear layer (Arrow
    routes among linear experts: nn.Linear, transformers' Conv1D, bitsandbytes layers)."""
    offenders = [
        f"  - adapter '{name}' on module '{key}' of type {type(layer.get_base_layer()).__name__}"
        for name in adapter_names
        for key, layer in _adapted_layers(model, name).items()
        if not isinstance(layer, Linear) or type(layer).__name__ == "ParamWrapper"
    ]
    if offenders:
        raise TypeError(
            "LoRA adapters must only target Linear-like layers (nn.Linear, HF Conv1D, or bitsandbytes layers). "
            "Found:\n" + "\n".join(offenders)
        )
