"""IA3: infused adapter by inhibiting and amplifying inner activations (Liu et al., 2022)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import IA3Config
from .layer import Conv2d, Conv3d, IA3Layer, Linear
from .model import IA3Model

register_peft_method(peft_type=PeftType.IA3, config_cls=IA3Config, model_cls=IA3Model, prefix="ia3_")

__all__ = ["Conv2d", "Conv3d", "IA3Config", "IA3Layer", "IA3Model", "Linear"]
