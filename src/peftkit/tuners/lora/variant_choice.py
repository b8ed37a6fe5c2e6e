"""Which LoRA variant a `LoraConfig` asks for, and the variant object each adapted layer gets.

A config asks for a variant through one field (PEFT's list: `use_dora`, `arrow_config`, `use_bdlora`,
`alora_invocation_tokens`, `velora_config`, `monteclora_config`, `kasa_config`, `init_lora_weights="mica"`;
and `use_qalora`). At most one may be set: PEFT's layers know no combination, and neither does peftkit.
DoRA is built by the layer (`use_dora`), aLoRA and bd-LoRA by the tuner once the layers exist; the others
here, one object per layer, handed to `update_layer(..., lora_variant=...)`.
"""

from __future__ import annotations

from typing import Any

from .arrow import ArrowVariant
from .kasa import KasaVariant
from .mica import MicaVariant
from .monteclora import MontecloraVariant
from .qalora import QaLoraVariant, check_qalora_config
from .variants import LoraVariant
from .velora import VeloraVariant

_VARIANT_FIELDS = (
    "alora_invocation_tokens",
    "arrow_config",
    "kasa_config",
    "monteclora_config",
    "use_bdlora",
    "use_dora",
    "use_qalora",
    "velora_config",
)


def requested_variants(config: Any) -> tuple[str, ...]:
    """The variant names `config` asks for, sorted (a field counts when its value is truthy, as in PEFT;
    `init_lora_weights="mica"` counts as "mica")."""
    names = [name for name in _VARIANT_FIELDS if getattr(config, name, None)]
    if config.init_lora_weights == "mica":
        names.append("mica")
    return tuple(sorted(names))


def check_variant_combination(config: Any) -> None:
    """Raise PEFT's error when `config` asks for more than one variant; check the chosen one's options."""
    requested = requested_variants(config)
    if len(requested) > 1:
        raise ValueError(f"Invalid or unsupported variant combination: {requested}")
    if config.use_qalora:
        check_qalora_config(config)


def new_variant(config: Any) -> LoraVariant | None:
    """A fresh variant object for one layer of an adapter with `config` (None: the layer builds it, or none).
    Checks the combination first: a mixed model creates LoRA layers without `LoraModel.inject_adapter`."""
    check_variant_combination(config)
    if config.velora_config is not None:
        return VeloraVariant(config.velora_config)
    if config.kasa_config is not None:
        return KasaVariant()
    if config.monteclora_config is not None:
        return MontecloraVariant(config.monteclora_config)
    if config.arrow_config is not None:
        return ArrowVariant(config.arrow_config)
    if config.use_qalora:
        return QaLoraVariant(config.qalora_group_size)
    if config.init_lora_weights == "mica":
        return MicaVariant()
    return None
