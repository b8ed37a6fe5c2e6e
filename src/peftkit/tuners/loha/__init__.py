"""LoHa: low-rank Hadamard product adaptation (LyCORIS; FedPara, Hyeon-Woo et al., 2022)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import LoHaConfig
from .layer import Conv1d, Conv2d, Linear, LoHaLayer
from .model import LoHaModel

register_peft_method(peft_type=PeftType.LOHA, config_cls=LoHaConfig, model_cls=LoHaModel, prefix="hada_")

__all__ = ["Conv1d", "Conv2d", "Linear", "LoHaConfig", "LoHaLayer", "LoHaModel"]
