"""MixedModel: adapters of different layer methods (LoRA, LoHa, LoKr, AdaLoRA, OFT, SHiRA) on one model.

Each adapter's layers are created by its own method's tuner; a module already adapted by another method
is wrapped again, so a module can hold e.g. a LoHa layer whose `base_layer` is a LoRA layer (the same
tree and keys as PEFT's mixed model). Several adapters, of any of these types, can be active at once.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ...config import PeftConfig
from ...utils.peft_types import PeftType
from ..tuners_utils import BaseTuner

COMPATIBLE_TUNER_TYPES = (
    PeftType.LORA,
    PeftType.LOHA,
    PeftType.LOKR,
    PeftType.ADALORA,
    PeftType.OFT,
    PeftType.SHIRA,
)


def _method_tuner(config: PeftConfig) -> type[BaseTuner]:
    from ...mapping import PEFT_TYPE_TO_TUNER_MAPPING

    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING.get(config.peft_type)
    if tuner_cls is None:
        raise ValueError(
            f"peftkit does not implement {config.peft_type.value} yet, so it cannot be mixed in."
        )
    return tuner_cls


def check_mixable(config: PeftConfig) -> None:
    """Raise when `config`'s method cannot take part in a mixed model."""
    if config.peft_type not in COMPATIBLE_TUNER_TYPES:
        names = ", ".join(t.value for t in COMPATIBLE_TUNER_TYPES)
        raise ValueError(
            f"The provided `peft_type` '{config.peft_type.value}' is not compatible with the `PeftMixedModel`. "
            f"Compatible types are: {names}."
        )


class MixedModel(BaseTuner):
    """The tuner of a PeftMixedModel: delegates layer creation to each adapter's own method."""

    prefix = ""  # each method brings its own parameter prefix

    def _check_new_adapter_config(self, config: PeftConfig) -> None:
        check_mixable(config)
        with_bias = [c for c in self.peft_config.values() if getattr(c, "bias", "none") != "none"]
        if len(with_bias) > 1:
            raise ValueError(
                "A mixed model supports only 1 adapter with bias; set bias='none' for the other adapters."
            )

    def _default_targets_for(self, config: PeftConfig) -> dict[str, Any]:
        return _method_tuner(config).target_module_mapping

    def _create_and_replace(
        self,
        config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
    ) -> None:
        tuner_cls = _method_tuner(config)
        kwargs = tuner_cls._layer_kwargs(self, config, current_key)
        if isinstance(target, tuner_cls.tuner_layer_cls):
            target.update_layer(adapter_name, **kwargs)
            return
        new_module = tuner_cls._create_new_module(self, config, adapter_name, target, **kwargs)
        new_module.set_adapter(self.active_adapter)
        setattr(parent, target_name, new_module)
