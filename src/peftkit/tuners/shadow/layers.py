"""ShadowPEFT's per-block layer: inject the shadow state into a decoder block, then advance it.

For a wrapped block with input h and shadow state s (both of the base width d):

    h_in  = h + alpha * W_up dropout(W_down (h - s))          (inject: W_down d -> r, W_up r -> d)
    h_out = block(h_in)
    g     = sigmoid(G(h_out)),  t = T(h_out)                  (G, T: Linear d -> u, GELU, Linear u -> d)
    s'    = (1 - g) * s + g * t                               (advance)

The pair (h, s) travels between blocks as one `ShadowCarrier` in the hidden-states slot of the decoder
loop: the tuner wraps it before the first wrapped block and unwraps it after the last one. A block that
receives a plain tensor (adapters disabled, or its adapter not active) is the frozen block. The adapter
math runs in the adapter tensors' dtype (fp32 on a half-precision base), and h_in returns to h's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._dropout import input_dropout
from .._tuner_layer import BaseTunerLayer
from .cache import shadow_cache_class
from .config import ShadowConfig
from .standalone import detached_shadow_model_class


class ShadowCarrier:
    """The base hidden states and the shadow state, passed together through the wrapped blocks."""

    def __init__(self, hidden: torch.Tensor, shadow: torch.Tensor) -> None:
        self.hidden = hidden
        self.shadow = shadow


def block_hidden_states(out: Any) -> torch.Tensor:
    """The hidden states in a decoder block's return value (a tensor, a tuple, or a model output)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        return out[0]
    for name in ("hidden_states", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise TypeError(f"Unsupported decoder block output type: {type(out)}. Expected a Tensor or a tuple.")


class ShadowLayer(BaseTunerLayer, nn.Module):
    """A decoder block with ShadowPEFT's injection and update networks, one set per adapter."""

    # shadow_dropout holds no tensors; it is listed so that it is created and deleted with the others
    adapter_layer_names = (
        "shadow_down",
        "shadow_up",
        "shadow_update_transform",
        "shadow_update_gate",
        "shadow_dropout",
    )
    other_param_names = ("shadow_r", "shadow_alpha")

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: ShadowConfig, hidden_size: int, **kwargs: Any
    ) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(base_layer)
        self.hidden_size = int(hidden_size)  # the base width d: the shadow state always has it
        self.shadow_r: dict[str, int] = {}
        self.shadow_alpha: dict[str, float] = {}
        self.shadow_down = nn.ModuleDict({})
        self.shadow_up = nn.ModuleDict({})
        self.shadow_dropout = nn.ModuleDict({})
        self.shadow_update_transform = nn.ModuleDict({})
        self.shadow_update_gate = nn.ModuleDict({})
        self.kwargs = kwargs
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(
        self, adapter_name: str, config: ShadowConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`'s bottleneck (W_up zero with init_weights) and update MLPs."""
        r = config.r
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        d, width = self.hidden_size, config.update_hidden_size or r
        self.shadow_r[adapter_name] = r
        self.shadow_alpha[adapter_name] = config.shadow_alpha
        # created in this order (and fp32) so that a seed gives the same tensors as peft
        self.shadow_down[adapter_name] = nn.Linear(d, r, bias=False)
        self.shadow_up[adapter_name] = nn.Linear(r, d, bias=False)
        self.shadow_dropout[adapter_name] = input_dropout(config.shadow_dropout)
        if config.init_weights:
            nn.init.zeros_(self.shadow_up[adapter_name].weight)
        self.shadow_update_transform[adapter_name] = nn.Sequential(
            nn.Linear(d, width), nn.GELU(), nn.Linear(width, d)
        )
        self.shadow_update_gate[adapter_name] = nn.Sequential(
            nn.Linear(d, width), nn.GELU(), nn.Linear(width, d)
        )
        device = self._block_device()
        if (
            device is not None and not self.shadow_down[adapter_name].weight.is_meta
        ):  # meta: filled from a file
            for attr in self.adapter_layer_names:
                getattr(self, attr)[adapter_name].to(device)
        self._finish_new_adapter(adapter_name, inference_mode)

    def _block_device(self) -> torch.device | None:
        """The device of the wrapped block's (first real) parameter."""
        return next((p.device for p in self.get_base_layer().parameters() if not p.is_meta), None)

    def _placement_reference(self) -> torch.Tensor | None:
        # the block has no single weight, and the adapter tensors stay fp32 whatever its dtype (as in
        # peft); update_layer has put them on the block's device already
        return None

    # ----- forward -----
    def forward(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError(
                "ShadowPEFT does not support mixed-adapter batches (adapter_names=): one adapter's shadow "
                "backbone computes the shadow state of the whole batch. Run one batch per adapter."
            )
        if not isinstance(hidden_states, ShadowCarrier):  # the shadow path is off for this pass
            return self.base_layer(hidden_states, *args, **kwargs)
        adapter_name = self.active_adapters[0]  # the tuner allows exactly one
        hidden, shadow = hidden_states.hidden, hidden_states.shadow
        out = self.base_layer(self.shadow_inject(hidden, shadow, adapter_name), *args, **kwargs)
        new_hidden = block_hidden_states(out)
        carrier = ShadowCarrier(new_hidden, self.shadow_update(new_hidden, shadow, adapter_name))
        # decoder loops that read `output[0]` (GPT-J) keep the block's other outputs
        return (carrier, *out[1:]) if isinstance(out, tuple) else carrier

    def shadow_inject(
        self, hidden_states: torch.Tensor, shadow_states: torch.Tensor, adapter_name: str
    ) -> torch.Tensor:
        """`h + alpha * W_up dropout(W_down (h - s))`, in h's dtype."""
        down = self.shadow_down[adapter_name]
        gap = (hidden_states - shadow_states).to(down.weight.dtype)
        correction = self.shadow_up[adapter_name](down(self.shadow_dropout[adapter_name](gap)))
        return hidden_states + (self.shadow_alpha[adapter_name] * correction).to(hidden_states.dtype)

    def shadow_update(
        self, hidden_states: torch.Tensor, shadow_states: torch.Tensor, adapter_name: str
    ) -> torch.Tensor:
        """`(1 - g) s + g T(h_out)`, `g = sigmoid(G(h_out))`, in s's dtype."""
        transform = self.shadow_update_transform[adapter_name]
        hidden = hidden_states.to(transform[0].weight.dtype)
        gate = torch.sigmoid(self.shadow_update_gate[adapter_name](hidden))
        new_shadow = (1.0 - gate) * shadow_states.to(hidden.dtype) + gate * transform(hidden)
        return new_shadow.to(shadow_states.dtype)

    # ----- no merging -----
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "ShadowPEFT cannot be merged into the base weights: the adaptation is an input-dependent, layer-space "
            "trajectory (the shadow state evolves with the data), not a static weight-space delta. Use "
            "`unload_shadow()` to obtain a standalone shadow model instead."
        )

    def unmerge(self) -> None:
        raise NotImplementedError("ShadowPEFT does not support merging, so there is nothing to unmerge.")

    def __getattr__(self, name: str) -> Any:
        # decoder loops read attributes off the block they call (Qwen3: `attention_type`): the wrapper
        # answers for the block it wraps
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def __repr__(self) -> str:
        return "shadow." + super().__repr__()


def __getattr__(name: str) -> Any:
    # classes built on transformers' Cache / PreTrainedModel exist once transformers is loaded (on first use)
    if name == "ShadowCache":
        return shadow_cache_class()
    if name == "DetachedShadowModel":
        return detached_shadow_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
