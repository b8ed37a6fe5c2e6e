"""LoKr: low-rank Kronecker product adaptation (LyCORIS; Yeh et al., 2023)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import LoKrConfig
from .layer import Conv1d, Conv2d, Linear, LoKrLayer
from .model import LoKrModel

register_peft_method(peft_type=PeftType.LOKR, config_cls=LoKrConfig, model_cls=LoKrModel, prefix="lokr_")

__all__ = ["Conv1d", "Conv2d", "Linear", "LoKrConfig", "LoKrModel", "LoKrLayer"]
