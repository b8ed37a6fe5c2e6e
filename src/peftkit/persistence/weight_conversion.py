"""Key renaming for transformers' own adapter loading (`PreTrainedModel.load_adapter`, used under the
`peft` alias): file keys in PEFT's format -> the keys of the adapted model.

transformers loads the adapter file with its checkpoint loader and a list of renamings. Each renaming is
a regex applied in turn (every match fires). PEFT's file key
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` becomes
`model.layers.0.self_attn.q_proj.lora_A.<adapter>.weight`: the wrapper prefix goes, the adapter name
goes in after the method's parameter container, and DoRA's magnitude (saved without `.weight`) gets it
back. The model's own renamings (legacy checkpoint names) follow.
"""

from __future__ import annotations

import re
from typing import Any

from ..mapping import PEFT_TYPE_TO_PREFIX_MAPPING

__all__ = ["build_peft_weight_mapping"]


def build_peft_weight_mapping(
    weight_conversions: list[Any] | None, adapter_name: str, peft_config: Any = None
) -> list[Any]:
    """The renamings that load a PEFT-format adapter file into adapter `adapter_name` of a model.

    Args:
        weight_conversions: the model's own conversions (transformers' `get_model_conversion_mapping`),
            applied after the adapter renamings.
        adapter_name: the adapter the file is loaded into.
        peft_config: the adapter's config; its method's parameter prefix (e.g. "lora_") says which key
            parts are adapter containers. Without it, nothing is renamed (as in PEFT).
    """
    from transformers.core_model_loading import WeightRenaming

    conversions = list(weight_conversions or [])
    if peft_config is None:
        return conversions

    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(peft_config.peft_type, "")
    name = re.escape(adapter_name)
    renamings = [WeightRenaming(r"^base_model\.model\.", "")]
    if prefix:
        renamings.append(WeightRenaming(rf"({re.escape(prefix)}[^.]*)", rf"\1.{adapter_name}"))
        # DoRA's magnitude is saved as `...lora_magnitude_vector` but is a module with a `weight`
        renamings.append(WeightRenaming(rf"({re.escape(prefix)}magnitude_vector\.{name})$", r"\1.weight"))
    return renamings + conversions
