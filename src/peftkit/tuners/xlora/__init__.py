"""X-LoRA: a mixture of LoRA experts, gated per token by a classifier (Buehler & Buehler, 2024)."""

from .._registration import register_peft_method
from .config import XLoraConfig
from .model import XLoraModel

register_peft_method(name="xlora", config_cls=XLoraConfig, model_cls=XLoraModel)

__all__ = ["XLoraConfig", "XLoraModel"]
