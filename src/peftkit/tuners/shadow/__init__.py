"""ShadowPEFT: a small trainable shadow network runs beside the frozen decoder and corrects each block.

Covers transformers decoder models (a mirrored or pretrained shadow backbone, generation with a dual
cache, the auxiliary loss, `unload_shadow`); peft's Diffusers (Flux/DiT) support is not included.
"""

from typing import Any

from .._registration import register_peft_method
from .cache import shadow_cache_class
from .config import ShadowConfig
from .layers import ShadowCarrier, ShadowLayer
from .model import ShadowModel
from .standalone import detached_shadow_model_class

register_peft_method(name="shadow", config_cls=ShadowConfig, model_cls=ShadowModel)

__all__ = [
    "DetachedShadowModel",
    "ShadowCache",
    "ShadowCarrier",
    "ShadowConfig",
    "ShadowLayer",
    "ShadowModel",
]


def __getattr__(name: str) -> Any:
    # built on transformers' Cache / PreTrainedModel, which `import peftkit` does not load: made on first use
    if name == "ShadowCache":
        return shadow_cache_class()
    if name == "DetachedShadowModel":
        return detached_shadow_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
