"""VeRA: vector-based random matrix adaptation (Kopiczko et al., 2024)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import VeraConfig
from .layer import Linear, VeraLayer
from .model import VeraModel

register_peft_method(
    peft_type=PeftType.VERA, config_cls=VeraConfig, model_cls=VeraModel, prefix="vera_lambda_"
)

__all__ = ["Linear", "VeraConfig", "VeraLayer", "VeraModel"]
