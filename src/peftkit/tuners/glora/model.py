"""GloraModel: the GLoRA tuner (plain `nn.Linear` layers only, as in PEFT)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._dispatch import UnsupportedLayerError, base_of
from ..tuners_utils import BaseTuner
from .config import GloraConfig
from .layer import GloraLayer, GloraLinear


def _reject_linear_subclasses(target: nn.Module, adapter_name: str, **kwargs: Any) -> None:
    """GLoRA reads and rewrites the dense weight itself, so a layer that merely subclasses `nn.Linear`
    (a quantized one) cannot be adapted; PEFT refuses those too."""
    base = base_of(target)
    if isinstance(base, nn.Linear) and type(base) is not nn.Linear:
        raise UnsupportedLayerError(
            f"Target module {base} (type {type(base).__name__}) is not supported by GloraModel: GLoRA adapts plain "
            "`torch.nn.Linear` layers only (it rewrites their dense weight); remove it from target_modules."
        )


class GloraModel(BaseTuner):
    """Adds GLoRA to `nn.Linear` layers.

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
