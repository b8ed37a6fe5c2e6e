"""LoKr: low-rank Kronecker product adaptation (LyCORIS; Yeh et al., 2023)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import LoKrConfig
from .layer import Conv1d, Conv2d, Linear, LoKrLayer
from .model import LoKrModel

register_peft_method(
    name="lokr",
    config_cls=LoKrConfig,
    model_cls=LoKrModel,
    is_mixed_compatible=True,
    default_target_modules=TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING,
)

__all__ = ["Conv1d", "Conv2d", "Linear", "LoKrConfig", "LoKrModel", "LoKrLayer"]
