"""CPT: context-aware prompt tuning (Blau et al., 2024)."""

from .._registration import register_peft_method
from .config import CPTConfig
from .model import CPTEmbedding

register_peft_method(name="cpt", config_cls=CPTConfig, model_cls=CPTEmbedding, prefix="cpt_")

__all__ = ["CPTConfig", "CPTEmbedding"]
