"""LoHa: low-rank Hadamard product adaptation (LyCORIS; FedPara, Hyeon-Woo et al., 2022)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import LoHaConfig
from .layer import Conv1d, Conv2d, Linear, LoHaLayer
from .model import LoHaModel

register_peft_method(
    name="loha",
    config_cls=LoHaConfig,
    model_cls=LoHaModel,
    is_mixed_compatible=True,
    default_target_modules=TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING,
)

__all__ = ["Conv1d", "Conv2d", "Linear", "LoHaConfig", "LoHaLayer", "LoHaModel"]
