"""MixedModel: adapters of different layer methods (LoRA, LoHa, LoKr, AdaLoRA, OFT, SHiRA) on one model.

Each adapter's layers are created by its own method's tuner; a module already adapted by another method
is wrapped again, so a module can hold e.g. a LoHa layer whose `base_layer` is a LoRA layer (the same
tree and keys as PEFT's mixed model). Several adapters, of any of these types, can be active at once.
"""

from __future__ import annotations

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
        super()._check_new_adapter_config(config)

    def _method_for(self, config: PeftConfig) -> type[BaseTuner]:
        return _method_tuner(config)
