"""GloraModel: the GLoRA tuner (plain `nn.Linear` layers, as in PEFT, and bitsandbytes' quantized ones)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._dispatch import UnsupportedLayerError, base_of
from .._quantized import quantization_backend
from ..tuners_utils import BaseTuner
from .config import GloraConfig
from .layer import GloraLayer, GloraLinear


def _reject_linear_subclasses(target: nn.Module, adapter_name: str, **kwargs: Any) -> None:
    """GLoRA computes its change from the weight's numbers, so a layer that merely subclasses `nn.Linear`
    and whose weight peftkit cannot read is refused, as PEFT refuses every subclass. A quantized layer
    (bitsandbytes) is adapted on its dequantized weight, which PEFT does not do."""
    base = base_of(target)
    if isinstance(base, nn.Linear) and type(base) is not nn.Linear and quantization_backend(base) is None:
        raise UnsupportedLayerError(
            f"Target module {base} (type {type(base).__name__}) is not supported by GloraModel: GLoRA adapts plain "
            "`torch.nn.Linear` layers and bitsandbytes' quantized ones only (it computes its change from the weight's "
            "numbers, which it cannot read here); remove it from target_modules."
        )


class GloraModel(BaseTuner):
    """Adds GLoRA to `nn.Linear` layers and bitsandbytes' `Linear4bit`/`Linear8bitLt` (on their dequantized
    weight; merging requantizes).

    Example:
        >>> from peftkit import GloraConfig, get_peft_model
        >>> model = get_peft_model(model, GloraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "glora_"
    tuner_layer_cls = GloraLayer
    layer_classes = {nn.Linear: GloraLinear}
    layer_dispatchers = (_reject_linear_subclasses,)

    def _layer_kwargs(self, config: GloraConfig, key: str) -> dict[str, Any]:
        return {"r": config.r, "config": config}
