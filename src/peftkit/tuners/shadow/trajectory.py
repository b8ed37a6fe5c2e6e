"""How the shadow state rides one forward pass of the base model (the boundary hooks of ShadowPEFT).

    model pre-hook      split a ShadowCache (the base model sees its own cache); run the active adapter's
                        shadow backbone on the raw inputs: s0 = projection(backbone(x))
    first block pre-hook  hand the block ShadowCarrier(h, s0) in place of h
    wrapped blocks        inject and advance (ShadowLayer.forward)
    last block hook       hand the decoder loop the plain hidden states again
    model hook            return the two caches as one ShadowCache (for the next decoding step)

`ShadowTrajectory` is mixed into `ShadowModel`; it reads the tuner's model, containers and adapters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...utils.cache_names import cache_argument_or_default, output_cache, set_cache
from .cache import shadow_cache_class
from .layers import ShadowCarrier, ShadowLayer

_CACHE_NAMES = ("cache", "past_key_values")  # transformers >= 5.24, and before


class ShadowTrajectory:
    """The boundary hooks that thread the shadow state through the decoder loop."""

    model: nn.Module
    shadow_backbone: nn.ModuleDict
    shadow_projection: nn.ModuleDict
    active_adapters: list[str]
    _hook_handles: list[Any]
    _boundary_layers: list[ShadowLayer]
    _seed_shadow_state: torch.Tensor | None
    _pending_seed: torch.Tensor | None
    _shadow_past_out: Any
    _should_pack_shadow_cache: bool
    _shadow_share_embeddings: dict[str, bool]

    def _remove_boundary_hooks(self) -> None:
        for handle in getattr(self, "_hook_handles", []):
            handle.remove()
        self._hook_handles, self._boundary_layers = [], []

    def _register_boundary_hooks(self) -> None:
        """(Re)attach the hooks to the model and to the first and last blocks the active adapter wraps
        (adapters may wrap different runs of blocks: each one's state rides its own run)."""
        self._remove_boundary_hooks()
        active = self.active_adapters[:1]
        wrapped = [
            module
            for module in self.model.modules()
            if isinstance(module, ShadowLayer) and active and active[0] in module.shadow_down
        ]
        self._boundary_layers = [wrapped[0], wrapped[-1]] if wrapped else []
        if not wrapped:
            return
        self._hook_handles = [
            self.model.register_forward_pre_hook(self._seed_shadow_pre_hook, with_kwargs=True),
            self.model.register_forward_hook(self._pack_shadow_cache_hook, with_kwargs=True),
            wrapped[0].register_forward_pre_hook(self._wrap_entry_pre_hook, with_kwargs=True),
            wrapped[-1].register_forward_hook(self._unwrap_exit_hook, with_kwargs=True),
        ]

    def _shadow_path_active(self) -> bool:
        if not self._boundary_layers or self._boundary_layers[0].disable_adapters:
            return False
        active = self.active_adapters
        return bool(active) and active[0] in self._boundary_layers[0].shadow_down

    def _seed_shadow_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Split a ShadowCache (the base model sees its own cache only) and compute s0 from the raw inputs."""
        self._seed_shadow_state = self._pending_seed = self._shadow_past_out = None
        self._should_pack_shadow_cache = False
        cache_name = next((n for n in _CACHE_NAMES if kwargs.get(n) is not None), None)
        shadow_past = None
        if cache_name is not None and isinstance(kwargs[cache_name], shadow_cache_class()):
            shadow_past = kwargs[cache_name].shadow
            kwargs = {**kwargs, cache_name: kwargs[cache_name].base}
        if not self._shadow_path_active():
            return args, kwargs
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = bool(getattr(getattr(self.model, "config", None), "use_cache", False))
        input_ids = kwargs.get("input_ids")
        if input_ids is None and args:
            input_ids = args[0]
        inputs_embeds = kwargs.get("inputs_embeds")
        if input_ids is None and inputs_embeds is None:
            # a custom decoder's main input under another name holds embeddings already
            main_name = getattr(self.model, "main_input_name", None)
            main_input = kwargs.get(main_name) if main_name else None
            if isinstance(main_input, torch.Tensor):
                inputs_embeds = main_input
        if input_ids is None and inputs_embeds is None:
            raise ValueError(
                "ShadowPEFT computes the shadow state from `input_ids` or `inputs_embeds`; the model was called "
                "with neither."
            )
        state, self._shadow_past_out = self._compute_initial_shadow_state(
            self.active_adapters[0],
            input_ids=input_ids,
            attention_mask=kwargs.get("attention_mask"),
            position_ids=kwargs.get("position_ids"),
            inputs_embeds=inputs_embeds,
            past_key_values=shadow_past,
            use_cache=use_cache,
        )
        self._seed_shadow_state = self._pending_seed = state
        self._should_pack_shadow_cache = bool(use_cache)
        return args, kwargs

    def _pack_shadow_cache_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Return both caches as one ShadowCache, so the next decoding step can advance both paths."""
        if not self._should_pack_shadow_cache:
            return output
        self._should_pack_shadow_cache = False
        shadow_past, self._shadow_past_out = self._shadow_past_out, None
        fields = getattr(type(output), "__dataclass_fields__", {})
        name = next((n for n in _CACHE_NAMES if n in fields), None)
        if name is not None:
            output[name] = shadow_cache_class()(base=output_cache(output), shadow=shadow_past)
        return output

    def _wrap_entry_pre_hook(self, module: ShadowLayer, args: tuple, kwargs: dict) -> Any:
        """Pair the first wrapped block's input with s0 (each s0 is used by one pass only)."""
        hidden = args[0] if args else kwargs.get("hidden_states")
        seed, self._pending_seed = self._pending_seed, None
        if hidden is None or seed is None:
            return None
        if hidden.shape[:-1] != seed.shape[:-1]:
            raise ValueError(
                f"Shadow state sequence shape {tuple(seed.shape[:-1])} does not match base hidden states "
                f"{tuple(hidden.shape[:-1])}. When using a KV cache, both the base model and the shadow backbone "
                "must see the same new-token length (pass a `ShadowCache` as `past_key_values`)."
            )
        carrier = ShadowCarrier(hidden, seed)
        return ((carrier, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": carrier})

    def _unwrap_exit_hook(self, module: ShadowLayer, args: tuple, kwargs: dict, output: Any) -> Any:
        if isinstance(output, tuple) and output and isinstance(output[0], ShadowCarrier):
            return (output[0].hidden, *output[1:])
        return output.hidden if isinstance(output, ShadowCarrier) else output

    def _compute_initial_shadow_state(
        self,
        adapter_name: str,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """(s0, the backbone's cache): the projected last hidden state of the shadow backbone."""
        backbone = self.shadow_backbone[adapter_name]
        share = self._shadow_share_embeddings.get(adapter_name, False)
        kwargs: dict[str, Any] = {
            "attention_mask": attention_mask,
            "use_cache": use_cache,
            "return_dict": True,
        }
        set_cache(kwargs, past_key_values, cache_argument_or_default(backbone))
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if share and inputs_embeds is None:
            inputs_embeds = self.model.get_input_embeddings()(input_ids)
        if inputs_embeds is not None:
            out = backbone(inputs_embeds=inputs_embeds, **kwargs)
        else:
            out = backbone(input_ids=input_ids, **kwargs)
        if getattr(out, "last_hidden_state", None) is None:
            raise TypeError(
                "The shadow backbone did not return a `last_hidden_state`; architecture is unsupported."
            )
        return self.shadow_projection[adapter_name](out.last_hidden_state), output_cache(out)
