"""LoraModel: the LoRA tuner (which layer kinds it adapts and with which settings)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
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
from .kasa import check_kasa_targets, kasa_regularization
from .layer import Conv1d, Conv2d, Conv3d, Embedding, Linear, LoraLayer
from .layer_replication import apply_layer_replication, check_no_shared_merge, is_replica_tie
from .multihead_attention import MultiheadAttention
from .param_wrapper import inject_parameters
from .quantized import QUANTIZATION_BACKENDS, dispatch_quantized
from .variant_choice import check_variant_combination, new_variant
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
    quantization_backends = QUANTIZATION_BACKENDS

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
            "lora_variant": new_variant(config),  # VeLoRA, KaSA, MiCA, QA-LoRA, MonteCLoRA, Arrow
            **({"loftq_config": config.loftq_config} if config.init_lora_weights == "loftq" else {}),
            **({"lora_ga_config": config.lora_ga_config} if config.init_lora_weights == "lora_ga" else {}),
        }

    def _check_new_adapter_config(self, config: LoraConfig) -> None:
        super()._check_new_adapter_config(config)
        # KaSA truncates the base weights when its adapter is created: an adapter made before or beside it
        # would see other base weights than it was made for (PEFT's rule)
        uses_kasa = config.kasa_config is not None
        for name, other in self.peft_config.items():
            if other is not config and (getattr(other, "kasa_config", None) is not None) is not uses_kasa:
                raise ValueError(
                    "KaSA cannot be combined with adapters that don't use KaSA, since KaSA modifies the base "
                    f"weights: the new adapter {'uses' if uses_kasa else 'does not use'} KaSA but adapter "
                    f"'{name}' {'does not' if uses_kasa else 'does'}."
                )

    def _pre_injection_hook(
        self, model: nn.Module, config: LoraConfig, adapter_name: str, matched: list[str]
    ) -> None:
        super()._pre_injection_hook(model, config, adapter_name, matched)
        if config.kasa_config is not None:  # all layers checked before the first base weight is truncated
            check_kasa_targets(model, config, matched)

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
        check_variant_combination(config)
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

    # ----- the regularisers of KaSA and MonteCLoRA (add them to the training loss) -----
    def _adapters_or_active(self, adapter_names: str | list[str] | None) -> list[str]:
        if adapter_names is None:
            return list(self.active_adapters)
        return [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)

    def _get_kasa_loss(self, adapter_names: str | list[str] | None = None) -> torch.Tensor | float:
        """KaSA's regularisers summed over the layers of `adapter_names` (default: the active adapters):
        `beta * sum(lora_diag^2) + gamma * (||B^T B - I||_F + ||A A^T - I||_F)` per layer, with each adapter's
        `kasa_config`; 0.0 when none of them uses KaSA. Add it to the training loss."""
        total: torch.Tensor | float = 0.0
        names = self._adapters_or_active(adapter_names)
        for module in self.model.modules():
            diag = getattr(module, "lora_diag", None) if isinstance(module, LoraLayer) else None
            for name in names if diag is not None else ():
                if name in diag:
                    options = self.peft_config[name].kasa_config
                    total = total + kasa_regularization(module, name, options.beta, options.gamma)
        return total

    def _get_monteclora_loss(self, adapter_names: str | list[str] | None = None) -> torch.Tensor | float:
        """MonteCLoRA's variational loss (weighted KL terms, plus the entropy term with `use_entropy`) averaged
        over the samplers of `adapter_names` (default: the active adapters); 0.0 when there are none (or in
        eval mode). Add it to the training loss, or train with `MontecloraTrainerMixin`."""
        total: torch.Tensor | float = 0.0
        count = 0
        names = self._adapters_or_active(adapter_names)
        for module in self.model.modules():
            samplers = (
                getattr(module, "lora_monteclora_sampler", None) if isinstance(module, LoraLayer) else None
            )
            for name in names if samplers is not None else ():
                if name in samplers:
                    kl, entropy = samplers[name].variational_loss()
                    total, count = total + kl + entropy, count + 1
        return total / count if count else 0.0
