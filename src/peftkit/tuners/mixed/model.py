"""MixedModel: adapters of different layer methods on one model (those whose registration says a mixed
model supports them: LoRA, LoHa, LoKr, AdaLoRA, OFT, SHiRA, as in PEFT).

Each adapter's layers are created by its own method's tuner; a module already adapted by another method
is wrapped again, so a module can hold e.g. a LoHa layer whose `base_layer` is a LoRA layer (the same
tree and keys as PEFT's mixed model). Several adapters, of any of these types, can be active at once.

`COMPATIBLE_TUNER_TYPES` (PEFT's name) is read from the registry each time it is asked for, so it lists
exactly the registered methods a mixed model supports (`register_peft_method(mixed_model_support=...)`).
"""

from __future__ import annotations

from typing import Any

from ...config import PeftConfig
from .._registry import PEFT_TYPE_TO_TUNER_MAPPING, mixed_compatible_types
from ..tuners_utils import BaseTuner


def __getattr__(name: str) -> Any:
    if name == "COMPATIBLE_TUNER_TYPES":
        return mixed_compatible_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _method_tuner(config: PeftConfig) -> type[BaseTuner]:
    check_mixable(config)
    return PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type]


# LoRA options that LoraModel.inject_adapter applies after the layers are made, which a mixed model (it
# makes only the layers) would skip without a word: refused until the mixed model applies them
_OPTIONS_APPLIED_AFTER_THE_LAYERS = (
    "alora_invocation_tokens",
    "use_bdlora",
    "target_parameters",
    "trainable_token_indices",
)


def check_mixable(config: PeftConfig) -> None:
    """Raise when `config`'s method, or one of its options, cannot take part in a mixed model."""
    compatible = mixed_compatible_types()
    if config.peft_type not in compatible:
        names = ", ".join(t.value for t in compatible)
        raise ValueError(
            f"The provided `peft_type` '{config.peft_type.value}' is not compatible with the `PeftMixedModel`. "
            f"Compatible types are: {names}."
        )
    unapplied = [name for name in _OPTIONS_APPLIED_AFTER_THE_LAYERS if getattr(config, name, None)]
    if unapplied:
        raise ValueError(
            f"peftkit's PeftMixedModel does not apply {', '.join(unapplied)} yet (the adapter would be made "
            "without them). Load this adapter with get_peft_model(model, config) / PeftModel.from_pretrained "
            "instead of mixed=True, or leave these options unset."
        )


class MixedModel(BaseTuner):
    """The tuner of a PeftMixedModel: delegates layer creation to each adapter's own method."""

    prefix = ""  # each method brings its own parameter prefix

    def _check_new_adapter_config(self, config: PeftConfig) -> None:
        check_mixable(config)
        super()._check_new_adapter_config(config)

    def _method_for(self, config: PeftConfig) -> type[BaseTuner]:
        return _method_tuner(config)
