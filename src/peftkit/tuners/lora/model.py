"""LoraModel: the LoRA tuner (which layer kinds it adapts and with which settings)."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ...utils.other import get_pattern_key
from ...utils.warnings import PeftWarning
from .._dispatch import CONV1D
from ..trainable_tokens.wrapper import (  # LoRA builds on trainable tokens for trainable_token_indices
    drop_token_wrappers,
    inject_trainable_tokens,
    token_state_keys,
)
from ..tuners_utils import BaseTuner
from .alora import install_alora
from .arithmetic import add_weighted_adapter
from .bdlora import check_bdlora_config, make_block_diagonal
from .config import LoraConfig
from .layer import Conv1d, Conv2d, Conv3d, Embedding, Linear, LoraLayer
from .layer_replication import apply_layer_replication, check_no_shared_merge, is_replica_tie
from .multihead_attention import MultiheadAttention
from .param_wrapper import inject_parameters
from .quantized import dispatch_quantized
from .variants import check_mergeable


class LoraModel(BaseTuner):
    """Adds LoRA adapters to `nn.Linear`, `nn.Embedding`, `nn.Conv1d/2d/3d`, transformers' `Conv1D` and
    `nn.MultiheadAttention` (both its projections).

    Example:
        >>> from peftkit import LoraConfig, LoraModel
        >>> lora_model = LoraModel(model, LoraConfig(target_modules=["q_proj", "v_proj"]), "default")
    """

    prefix = "lora_"
    tuner_layer_cls = LoraLayer
    layer_classes = {
        nn.Linear: Linear,
        CONV1D: Linear,
        nn.Embedding: Embedding,
        nn.Conv1d: Conv1d,
        nn.Conv2d: Conv2d,
        nn.Conv3d: Conv3d,
        nn.MultiheadAttention: MultiheadAttention,
    }
    # bitsandbytes layers subclass nn.Linear: they must be dispatched before the plain Linear entry
    layer_dispatchers = (dispatch_quantized,)

    def _layer_kwargs(self, config: LoraConfig, key: str) -> dict[str, Any]:
        rank_key = get_pattern_key(config.rank_pattern.keys(), key)
        alpha_key = get_pattern_key(config.alpha_pattern.keys(), key)
        return {
            "r": config.rank_pattern.get(rank_key, config.r),
            "lora_alpha": config.alpha_pattern.get(alpha_key, config.lora_alpha),
            "lora_dropout": config.lora_dropout,
            "fan_in_fan_out": config.fan_in_fan_out,
            "init_lora_weights": config.init_lora_weights,
            "use_rslora": config.use_rslora,
            "use_dora": config.use_dora,
            "lora_bias": config.lora_bias,
            **({"loftq_config": config.loftq_config} if config.init_lora_weights == "loftq" else {}),
        }

    def add_weighted_adapter(
        self,
        adapters: list[str],
        weights: list[float],
        adapter_name: str,
        combination_type: str = "svd",
        svd_rank: int | None = None,
        svd_clamp: float | None = None,
        svd_full_matrices: bool = True,
        svd_driver: str | None = None,
        density: float | None = None,
        majority_sign_method: str = "total",
    ) -> None:
        """Add adapter `adapter_name`: a weighted combination of `adapters` (see `lora.arithmetic`).

        combination_type: "svd", "linear", "cat", "ties", "ties_svd", "dare_ties", "dare_linear",
        "dare_ties_svd", "dare_linear_svd", "magnitude_prune" or "magnitude_prune_svd".
        """
        add_weighted_adapter(
            self,
            adapters,
            weights,
            adapter_name,
            combination_type=combination_type,
            svd_rank=svd_rank,
            svd_clamp=svd_clamp,
            svd_full_matrices=svd_full_matrices,
            svd_driver=svd_driver,
            density=density,
            majority_sign_method=majority_sign_method,
        )

    def _expected_tie(self, name: str, others: list[str]) -> bool:
        # replicated layers share their base weights by design (and merging them is refused)
        if getattr(self, "_layer_replication", None) is None:
            return False

        return is_replica_tie(name, others)

    # ----- layer_replication, target_parameters (param_wrapper.py), trainable_token_indices (trainable_tokens/) -----
    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        config = self.peft_config[adapter_name]
        if config.layer_replication:
            apply_layer_replication(self, model, config.layer_replication)
        if config.use_bdlora is not None:
            check_bdlora_config(config)
        super().inject_adapter(model, adapter_name, **kwargs)
        if config.use_bdlora is not None:
            self._make_block_diagonal(model, adapter_name)
        if config.target_parameters:
            for layer in inject_parameters(self, model, adapter_name):
                if kwargs.get("autocast_adapter_dtype", True):
                    layer.cast_adapter_dtype(adapter_name)
        if config.alora_invocation_tokens is not None:
            install_alora(self, model, adapter_name)
        if config.trainable_token_indices:
            indices, active = config.trainable_token_indices, self.active_adapters
            layers = inject_trainable_tokens(model, adapter_name, indices, active, config.inference_mode)
            if kwargs.get("autocast_adapter_dtype", True):
                for layer in layers:
                    layer.cast_adapter_dtype(adapter_name)

    def _make_block_diagonal(self, model: nn.Module, adapter_name: str) -> None:
        """bd-LoRA: the adapter's A or B becomes block-diagonal where `use_bdlora` says (see bdlora.py)."""
        config = self.peft_config[adapter_name]
        try:
            for name, module in list(model.named_modules()):
                if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
                    make_block_diagonal(
                        module, adapter_name, name, config.use_bdlora, config.init_lora_weights
                    )
        except BaseException:
            self._remove_partial_adapter(model, adapter_name)
            raise

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        return token_state_keys(self.model, adapter_name)

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        check_no_shared_merge(self)
        self._check_variants_mergeable(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def _check_variants_mergeable(self, adapter_names: list[str] | None) -> None:
        """Refuse, before any layer merges, to merge an adapter whose variant cannot be merged (aLoRA)."""
        names = self.active_adapters if adapter_names is None else list(adapter_names)
        check_mergeable((m for m in self.model.modules() if isinstance(m, LoraLayer)), names)

    def _unload_and_optionally_merge(self, merge: bool, *args: Any, **kwargs: Any) -> nn.Module:
        if merge:
            check_no_shared_merge(self)
            self._check_variants_mergeable(kwargs.get("adapter_names", args[2] if len(args) > 2 else None))
        model = super()._unload_and_optionally_merge(merge, *args, **kwargs)
        drop_token_wrappers(model)
        return model

    def _set_adapter_layers(self, enabled: bool = True) -> None:
        if not enabled:
            for name in self.active_adapters:
                if getattr(self.peft_config[name], "bias", "none") != "none":
                    warnings.warn(
                        f"Careful, disabling adapter layers with bias configured to be "
                        f"'{self.peft_config[name].bias}' does not produce the same output as the base model "
                        "would without adaption.",
                        PeftWarning,
                    )
        super()._set_adapter_layers(enabled)
