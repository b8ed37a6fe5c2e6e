"""XLoraModel: LoRA experts mixed per token by a classifier (the X-LoRA tuner).

The module tree is PEFT's: `lora_model` (a LoraModel holding the experts "0", "1", ... around the base
model) and `internal_xlora_classifier`. Every forward of the base model runs twice: a scaling pass
(no gradients, the experts weighted by `scaling_pass_value`) whose last hidden state the classifier
turns into per-token scalings, then the real pass with those scalings (see `layer.py`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tuners_utils import BaseTuner
from .classifier import XLoraClassifier
from .config import XLoraConfig
from .experts import add_expert, fill_expert, read_expert
from .layer import xlora_layer_for

_NOT_MERGEABLE = (
    "X-LoRA cannot be merged: it mixes its LoRA experts with scalings its classifier predicts for every token, "
    "so there is no single weight change to merge. Use unload() to get the base model back."
)
_ONE_ADAPTER = (
    "An X-LoRA model holds one X-LoRA adapter, whose experts are fixed when it is created; {what} is not "
    "supported. Create another model (get_peft_model) for other experts."
)


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))


def convert_layers_to_xlora(
    base: nn.Module, xloramodel: nn.Module, config: XLoraConfig
) -> tuple[int, torch.device | None]:
    """Give every LoRA Linear/Conv2d/Embedding layer of `base` X-LoRA's forward, numbered in module
    order; returns (how many, the device of the last one's weights), as PEFT's function of that name."""
    count, device = 0, None
    for module in base.modules():
        layer = xlora_layer_for(xloramodel, module, count, config)
        if layer is not None:
            module.forward = layer.forward
            device = module.weight.device
            count += 1
    return count, device


class XLoraModel(BaseTuner):
    """X-LoRA (mixture of LoRA experts) around a transformers model with a config.

    The experts are the LoRA adapters `config.adapters` names (local folders, or Hub ids); only the
    classifier trains (and the experts with `use_trainable_adapters=True`). The model's
    `config.use_cache` must be False: every step reruns the whole sequence for the scaling pass.

    Example:
        >>> from peftkit import XLoraConfig, get_peft_model
        >>> model.config.use_cache = False
        >>> config = XLoraConfig(task_type="CAUSAL_LM", hidden_size=model.config.hidden_size,
        ...                      adapters={"0": "./expert_a", "1": "./expert_b"})
        >>> model = get_peft_model(model, config)
    """

    prefix = "xlora_"

    def __init__(
        self,
        model: nn.Module,
        config: XLoraConfig | dict[str, XLoraConfig],
        adapter_name: str,
        low_cpu_mem_usage: bool = False,
        autocast_adapter_dtype: bool = True,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        conf = config[adapter_name] if isinstance(config, dict) else config
        self._check_model(model, conf)
        self.xlora_config = conf
        self.lora_model = self._load_experts(model, conf, low_cpu_mem_usage, autocast_adapter_dtype)
        self.peft_config: dict[str, Any] = {adapter_name: conf, **self.lora_model.peft_config}
        self.targeted_module_names = self.lora_model.targeted_module_names
        self.targeted_parameter_names: list[str] = []
        self.disabled = False  # disable_adapter_layers / disable_adapter()
        self._active_scalings: torch.Tensor | None = None  # the scalings of the pass under way
        self.internal_xlora_scalings: torch.Tensor | None = None
        n_layers = self._swap_layers(model, conf)
        self.internal_xlora_classifier = XLoraClassifier(
            model, conf, n_classes=len(conf.adapters), n_layers=n_layers, device=_device_of(model)
        )
        self._hooks = [
            model.register_forward_pre_hook(self._scaling_pass, with_kwargs=True),
            model.register_forward_hook(self._end_of_pass),
        ]
        self._set_trainability(conf)
        model.peft_config = self.peft_config
        self.eval()

    # ----- building -----
    @staticmethod
    def _check_model(model: nn.Module, config: XLoraConfig) -> None:
        model_config = getattr(model, "config", None)
        if model_config is None:
            raise ValueError(
                "X-LoRA needs a transformers model (one with a `config`): it reads its hidden states."
            )
        if getattr(model_config, "use_cache", False):
            raise ValueError(
                "`use_cache` must be False: X-LoRA reruns the whole sequence at every step for its scaling pass. "
                "Set model.config.use_cache = False before creating the X-LoRA model."
            )
        hidden = getattr(model_config, "hidden_size", None)
        if isinstance(hidden, int) and hidden != config.hidden_size:
            raise ValueError(
                f"XLoraConfig.hidden_size={config.hidden_size} differs from the model's hidden_size={hidden}; set "
                "hidden_size=model.config.hidden_size."
            )
        if not config.adapters:
            raise ValueError(
                "XLoraConfig.adapters is empty: give at least one LoRA expert (name -> adapter folder)."
            )
        if config.top_k_lora is not None and config.top_k_lora > len(config.adapters):
            raise ValueError(
                f"top_k_lora={config.top_k_lora} exceeds the number of experts ({len(config.adapters)})."
            )

    @staticmethod
    def _load_experts(
        model: nn.Module, config: XLoraConfig, low_cpu_mem_usage: bool, autocast: bool
    ) -> nn.Module:
        lora_model = None
        device = _device_of(model)
        for index, candidates in enumerate(config.expert_candidates()):
            name = str(index)
            expert_config, weights, where = read_expert(candidates, device)
            lora_model = add_expert(
                lora_model,
                model,
                name,
                expert_config,
                low_cpu_mem_usage=low_cpu_mem_usage,
                autocast_adapter_dtype=autocast,
            )
            fill_expert(lora_model, name, weights, where, assign=low_cpu_mem_usage)
        lora_model.set_adapter([str(i) for i in range(len(config.adapters))])
        return lora_model

    def _swap_layers(self, model: nn.Module, config: XLoraConfig) -> int:
        count, _ = convert_layers_to_xlora(model, self, config)
        if not count:
            raise ValueError(
                "The X-LoRA experts adapt no Linear, Conv2d or Embedding layer; there is nothing to mix."
            )
        return count

    def _set_trainability(self, config: XLoraConfig) -> None:
        train_experts = config.use_trainable_adapters and not config.inference_mode
        for name, param in self.lora_model.named_parameters():
            if ".lora_" in name:  # the experts' tensors (the classifier is not under lora_model)
                param.requires_grad = train_experts
        self.internal_xlora_classifier.requires_grad_(not config.inference_mode)

    # ----- the two passes -----
    def _scaling_pass(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before the base model's forward: run it once with the dummy scalings and predict the real ones."""
        if self.disabled:
            return
        classifier = self.internal_xlora_classifier
        self._active_scalings = classifier.make_dummy_scalings(*args, **kwargs)
        pass_kwargs = {k: v for k, v in kwargs.items() if k != "labels"}  # its loss would be thrown away
        pass_kwargs.update(output_hidden_states=True, return_dict=True)
        with torch.no_grad():
            output = module.forward(*args, **pass_kwargs)  # `forward`, not the call: no hooks again
        scalings = classifier(output, *args, **kwargs)
        self.internal_xlora_scalings = scalings
        self._active_scalings = scalings

    def _end_of_pass(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._active_scalings = None

    @property
    def model(self) -> nn.Module:
        """The base model (inside the experts' LoraModel)."""
        return self.lora_model.model

    @property
    def active_adapter(self) -> str | list[str]:
        """The experts, all active (as PEFT reports them)."""
        return self.lora_model.active_adapter

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["use_cache"] = False  # each step needs the whole sequence for the scaling pass
        return self.model.generate(*args, **kwargs)

    def enable_adapter_layers(self) -> None:
        self.disabled = False

    def disable_adapter_layers(self) -> None:
        """X-LoRA off: the base model's outputs (no scaling pass either)."""
        self.disabled = True

    # ----- what X-LoRA does not do -----
    def _create_new_module(self, *args: Any, **kwargs: Any) -> nn.Module:
        raise ValueError("X-LoRA adds no layers of its own: its experts are LoRA layers (see _load_experts).")

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(_NOT_MERGEABLE)

    def unmerge_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(_NOT_MERGEABLE)

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> nn.Module:
        raise ValueError(_NOT_MERGEABLE)

    def inject_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(_ONE_ADAPTER.format(what="adding an adapter"))

    def set_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(_ONE_ADAPTER.format(what="switching adapters"))

    def delete_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(_ONE_ADAPTER.format(what="deleting an adapter"))

    def unload(self) -> nn.Module:
        """The base model without experts, classifier or hooks."""
        for hook in self._hooks:
            hook.remove()
        return self.lora_model.unload()

    # ----- files -----
    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        """The classifier is the X-LoRA adapter's own tensors (saved under their model keys)."""
        if adapter_name not in self.peft_config or self.peft_config[adapter_name] is not self.xlora_config:
            return {}
        names = self.internal_xlora_classifier.state_dict()
        return {f"internal_xlora_classifier.{k}": f"internal_xlora_classifier.{k}" for k in names}

    def _adapter_tensors_to_save(
        self, tensors: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        """Experts are saved as plain LoRA adapters of the base model (`base_model.model.<module>...`)."""
        inner = "base_model.lora_model.model."
        return {
            ("base_model.model." + k[len(inner) :] if k.startswith(inner) else k): v
            for k, v in tensors.items()
        }

    # ----- scalings (PEFT's API) -----
    def set_topk_lora(self, value: int | None) -> None:
        """Use only the `value` experts with the largest scalings per token (None: all)."""
        if value is not None and not 1 <= value <= len(self.xlora_config.adapters):
            raise ValueError(
                f"top_k_lora must be None or in 1..{len(self.xlora_config.adapters)}, got {value!r}."
            )
        self.xlora_config.top_k_lora = value

    def set_global_scaling_weight(self, weight: float) -> None:
        """The factor on every expert's output (1 by default)."""
        self.xlora_config.global_scaling_weight = weight

    def get_global_scaling_weight(self) -> float:
        return self.xlora_config.global_scaling_weight

    def set_scaling_pass_value(self, value: float | None) -> None:
        """The experts' scaling during the scaling pass (None: 1 / number of experts)."""
        self.internal_xlora_classifier._set_override_scaling_pass_value(value)

    def get_latest_scalings(self) -> torch.Tensor | None:
        """The scalings of the latest forward, (batch, seq, n_layers, n_experts), or None before any."""
        return self.internal_xlora_scalings

    def get_scalings_log(self) -> list[torch.Tensor]:
        """A copy of the list of logged scalings (the tensors themselves are not copied)."""
        return self.internal_xlora_classifier.log_scalings.copy()

    def enable_scalings_logging(self) -> None:
        self.internal_xlora_classifier.scalings_logging = True

    def disable_scalings_logging(self) -> None:
        """Stop logging, keeping the log."""
        self.internal_xlora_classifier.scalings_logging = False

    def clear_scalings_log(self) -> None:
        self.internal_xlora_classifier.log_scalings.clear()

    def get_bucketed_scalings_log(self) -> dict[int, tuple[list[int], list[torch.Tensor]]]:
        """The log grouped by sequence length: length -> (positions in the log, scalings)."""
        return self.internal_xlora_classifier._get_bucketed_scalings()
