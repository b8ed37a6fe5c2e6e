"""XLoraConfig: the fields PEFT 0.21 writes for X-LoRA, with the same names and defaults."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

from ...config import PeftConfig
from ...utils.constants import CONFIG_NAME
from ...utils.hub import resolve_adapter_file
from ...utils.peft_types import PeftType
from ...utils.warnings import PeftWarning
from .._config_checks import check_dropout


@dataclass
class XLoraConfig(PeftConfig):
    """Configuration of X-LoRA (Buehler & Buehler, 2024, "X-LoRA: Mixture of Low-Rank Adapter Experts").

    A frozen set of LoRA adapters (the experts, `adapters`: name -> folder) is mixed per token and per
    layer by a small classifier that reads the model's last hidden state from a first "scaling" pass.

    Args:
        hidden_size: the base model's hidden size (the classifier's input).
        adapters: expert name -> LoRA adapter folder (or Hub id). Experts are loaded in this order and
            named "0", "1", ... inside the model; `from_pretrained(..., adapters=...)` overrides the paths.
        enable_softmax: softmax (with `softmax_temperature`) over the experts' scalings.
        enable_softmax_topk: softmax over the top-k experts only (set `top_k_lora` too).
        layerwise_scalings: one set of scalings per LoRA layer, else one shared by all layers.
        xlora_depth, xlora_size, xlora_dropout_p: the classifier's depth, width and dropout.
        use_trainable_adapters: train the experts as well as the classifier.
        softmax_temperature: temperature of the classifier's softmax (lower: sharper).
        top_k_lora: use only the k experts with the largest scalings per token.
        scaling_pass_value: the experts' scaling during the scaling pass.
        global_scaling_weight: factor on every expert's output.
    """

    hidden_size: int = None  # type: ignore[assignment]
    adapters: dict[str, str] = None  # type: ignore[assignment]
    enable_softmax: bool = True
    enable_softmax_topk: bool = False
    layerwise_scalings: bool = False
    xlora_depth: int = 1
    xlora_size: int = 2048
    xlora_dropout_p: float = 0.2
    use_trainable_adapters: bool = False
    softmax_temperature: float = 1.0
    top_k_lora: int | None = None
    scaling_pass_value: float = 0.0
    global_scaling_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.XLORA
        if self.hidden_size is None:
            warnings.warn(
                "No value was provided for `hidden_size`. This will be set to 4096 by default, please ensure "
                "that this is correct.",
                PeftWarning,
            )
            self.hidden_size = 4096
        if self.adapters is None:
            warnings.warn(
                "No value was provided for `adapters`. This will be set to empty, please ensure that this is correct.",
                PeftWarning,
            )
            self.adapters = {}
        self._check_values()
        if self.enable_softmax_topk and self.top_k_lora is None:
            warnings.warn("`enable_softmax_topk` enabled `top_k_lora` is not set", PeftWarning)
        if self.enable_softmax_topk and self.enable_softmax:
            warnings.warn(
                "`enable_softmax_topk` and `enable_softmax` are both enabled. This will result in worse performance.",
                PeftWarning,
            )
        # where the experts come from when the model is built: [(id, subfolder, hub kwargs), ...] per expert,
        # tried in order; set by `_prepare_for_loading`, else the `adapters` paths
        self._expert_candidates: list[list[tuple[str, str | None, dict[str, Any]]]] | None = None

    def _check_values(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")

        positive_int("hidden_size")
        positive_int("xlora_depth")
        positive_int("xlora_size")
        if self.top_k_lora is not None:
            positive_int("top_k_lora")
        if not isinstance(self.adapters, dict):
            raise ValueError(
                f"adapters must map expert names to LoRA adapter folders, got {type(self.adapters).__name__}."
            )
        check_dropout(self, "xlora_dropout_p")
        if not float(self.softmax_temperature) > 0:
            raise ValueError(f"softmax_temperature must be positive, got {self.softmax_temperature!r}.")

    def _prepare_for_loading(self, model_id: str, kwargs: dict[str, Any], hub_kwargs: dict[str, Any]) -> None:
        """`from_pretrained(..., adapters={...})` gives the experts' folders; without it, the expert copies
        saved beside the X-LoRA adapter (sub-folders "0", "1", ...) come first, then the saved paths."""
        given = kwargs.pop("adapters", None)
        if given is not None:
            self.adapters = dict(given)
            self._check_values()
            return
        base = hub_kwargs.get("subfolder")
        hub = {k: v for k, v in hub_kwargs.items() if k != "subfolder"}
        candidates = []
        for index, path in enumerate(self.adapters.values()):
            subfolder = os.path.join(base, str(index)) if base else str(index)
            saved = [(os.fspath(model_id), subfolder, hub)] if _has_config(model_id, subfolder, hub) else []
            candidates.append([*saved, (path, None, {})])
        self._expert_candidates = candidates

    def expert_candidates(self) -> list[list[tuple[str, str | None, dict[str, Any]]]]:
        """Per expert, where to load it from (first usable wins)."""
        if self._expert_candidates is not None:
            return self._expert_candidates
        return [[(path, None, {})] for path in self.adapters.values()]


def _has_config(model_id: str, subfolder: str, hub_kwargs: dict[str, Any]) -> bool:
    try:
        return resolve_adapter_file(model_id, CONFIG_NAME, subfolder=subfolder, **hub_kwargs) is not None
    except Exception:  # an unreachable or unknown location holds no usable copy
        return False
