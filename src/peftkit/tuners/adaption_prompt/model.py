"""AdaptionPromptModel: puts AdaptedAttention modules into a model's top attention layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...utils.warnings import AdapterLoadError
from .config import AdaptionPromptConfig
from .layer import SPECS, AdaptedAttention

_PARAMETER_NAMES = ("adaption_prompt", "adaption_gate")


class AdaptionPromptModel(nn.Module):
    """Adaption prompts for several named adapters, one active at a time.

    Each adapter owns an AdaptedAttention per adapted layer, wrapping that layer's original attention
    module. Only the active adapter's modules sit in the model (so the module tree and state-dict keys
    are PEFT's: `model.layers.N.self_attn.adaption_prompt`); the others wait in `_cached_adapters`.
    """

    def __init__(
        self, model: nn.Module, configs: dict[str, AdaptionPromptConfig], adapter_name: str, **_: Any
    ) -> None:
        super().__init__()
        self.model = model
        self.peft_config: dict[str, AdaptionPromptConfig] = dict(configs)
        self._cached_adapters: dict[str, dict[str, AdaptedAttention]] = {}
        self._enabled = True
        self.active_adapter = adapter_name
        for param in model.parameters():
            param.requires_grad_(False)
        self.inject_adapter(model, adapter_name)
        self._swap_in(adapter_name)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    @property
    def active_adapters(self) -> list[str]:
        return [self.active_adapter]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    # ----- creating adapters -----
    def _model_type(self) -> str:
        model_type = getattr(getattr(self.model, "config", None), "model_type", None)
        if model_type not in SPECS:
            raise ValueError(
                f"Adaption prompts support the model types {sorted(SPECS)}; this model's is {model_type!r}."
            )
        return model_type

    def _attention_paths(self, config: AdaptionPromptConfig) -> list[str]:
        originals = {path: module.model for path, module in self._adapted_modules()}
        names = [n for n, _ in self.model.named_modules() if n.split(".")[-1] == config.target_modules]
        names = [
            n for n in names if not any(n.startswith(p + ".") for p in originals)
        ]  # skip wrapped originals
        if config.adapter_layers > len(names):
            raise ValueError(
                f"Config specifies more adapter layers '{config.adapter_layers}' than the model has '{len(names)}'."
            )
        return names[len(names) - config.adapter_layers :]

    def _adapted_modules(self) -> list[tuple[str, AdaptedAttention]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, AdaptedAttention)]

    def inject_adapter(self, model: nn.Module, adapter_name: str, **_: Any) -> None:
        """Create adapter `adapter_name`'s modules (from `peft_config[adapter_name]`); it is not activated."""
        config = self.peft_config[adapter_name]
        model_type = self._model_type()
        if config.target_modules is None:
            config.target_modules = SPECS[model_type].target_modules
        if not config.adapter_len or not config.adapter_layers:
            raise ValueError("AdaptionPromptConfig needs adapter_len and adapter_layers (positive integers).")
        modules = {}
        for path in self._attention_paths(config):
            original = self._original_at(path)
            for name in (
                ("q_proj", "k_proj", "v_proj", "o_proj")
                if not SPECS[model_type].fused_qkv
                else ("c_attn", "c_proj")
            ):
                if not hasattr(original, name):
                    raise ValueError(
                        f"target_modules={config.target_modules!r} selects {type(original).__name__} at {path}, which "
                        f"has no {name}: adaption prompts wrap attention modules."
                    )
            modules[path] = AdaptedAttention(model_type, config.adapter_len, original)
        self._cached_adapters[adapter_name] = modules

    def _original_at(self, path: str) -> nn.Module:
        module = self.model.get_submodule(path)
        return module.model if isinstance(module, AdaptedAttention) else module

    # ----- switching -----
    def _put(self, path: str, module: nn.Module) -> None:
        parent, _, name = path.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, name, module)

    def _swap_out(self) -> None:
        for path, module in self._adapted_modules():
            self._put(path, module.model)

    def _swap_in(self, adapter_name: str) -> None:
        for path, module in self._cached_adapters[adapter_name].items():
            self._put(path, module)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1 or names[0] not in self._cached_adapters:
            raise ValueError(f"Adapter {adapter_name} not found (one of {sorted(self._cached_adapters)}).")
        if self._enabled:
            self._swap_out()
            self._swap_in(names[0])
        self.active_adapter = names[0]

    def enable_adapter_layers(self) -> None:
        if not self._enabled:
            self._swap_in(self.active_adapter)
        self._enabled = True

    def disable_adapter_layers(self) -> None:
        if self._enabled:
            self._swap_out()
        self._enabled = False

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self._cached_adapters:
            raise ValueError(f"Adapter {adapter_name} does not exist.")
        if len(self._cached_adapters) == 1:
            raise ValueError(f"Cannot delete '{adapter_name}', the only adapter; use unload() instead.")
        if adapter_name == self.active_adapter:
            self.set_adapter(next(n for n in self._cached_adapters if n != adapter_name))
        del self._cached_adapters[adapter_name]
        del self.peft_config[adapter_name]

    def unload(self) -> nn.Module:
        """The model with its original attention modules back (adaption prompts dropped)."""
        self._swap_out()
        return self.model

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> nn.Module:
        raise ValueError("Adaption prompts cannot be merged into the weights; use unload() to drop them.")

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("Adaption prompts cannot be merged into the weights.")

    # ----- state dicts (PEFT's keys: module paths, no adapter name) -----
    def _adapter_tensors(self, adapter_name: str, prefix: str) -> dict[str, nn.Parameter]:
        return {
            f"{prefix}model.{path}.{name}": getattr(module, name)
            for path, module in self._cached_adapters[adapter_name].items()
            for name in _PARAMETER_NAMES
        }

    def adapter_state_dict(self, adapter_name: str, prefix: str = "") -> dict[str, torch.Tensor]:
        """Adapter `adapter_name`'s tensors keyed as PEFT saves them (active or not)."""
        return {k: v.detach() for k, v in self._adapter_tensors(adapter_name, prefix).items()}

    def load_adapter_state_dict(
        self,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        prefix: str = "",
        missing_keys_are_errors: bool = False,
    ) -> Any:
        """Copy file tensors into adapter `adapter_name`; returns `_IncompatibleKeys(missing, unexpected)`."""
        targets = self._adapter_tensors(adapter_name, prefix)
        unexpected = [k for k in state_dict if k not in targets]
        missing = [k for k in targets if k not in state_dict]
        if len(missing) == len(targets) or (missing and missing_keys_are_errors):
            raise AdapterLoadError(
                f"The file lacks adaption-prompt tensors of adapter '{adapter_name}': {missing[:6]}. It was saved for "
                "another model or another adapter_layers."
            )
        with torch.no_grad():
            for key, param in targets.items():
                if key not in state_dict:
                    continue
                if tuple(state_dict[key].shape) != tuple(param.shape):
                    raise AdapterLoadError(
                        f"{key}: the model expects {tuple(param.shape)}, the file holds {tuple(state_dict[key].shape)} "
                        "(another adapter_len or hidden size)."
                    )
                param.copy_(state_dict[key])
        return torch.nn.modules.module._IncompatibleKeys(missing, unexpected)
